"""The files the training stages read, each named once with what it is for.

An :class:`Input` is one file of the official layout and the sentence that says why a stage
needs it; the stages' ``inputs()`` (:mod:`.stages`) list them, the ``train`` help is made from
them, and the missing-file and wrong-file errors quote them. This module imports nothing heavy
(the CLI's ``--help`` reads it).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError

# The official file names
STYLEGAN_FFHQ = "stylegan2-ffhq-config-f.pt"   # rosinality's FFHQ StyleGAN2
ENCODER = "encoder.pt"                         # the z+ pSp encoder
PRETRAIN = "generator-pretrain.pt"             # written by pretrain
FINETUNED_STYLEGAN = "finetune-000600.pt"      # written by finetune-stylegan (destylize's --model_name)
GENERATOR = "generator.pt"                     # written by finetune
EXSTYLE = "exstyle_code.npy"                   # written by destylize
INSTYLE = "instyle_code.npy"                   # written by destylize
REFINED_EXSTYLE = "refined_exstyle_code.npy"   # written by refine-exstyle
VGG19_FILE = "vgg19-dcbb9e9d.pth"              # torchvision's VGG19: perceptual, contextual and style losses
VGG16_FILE = "vgg16-397923af.pth"              # torchvision's VGG16: the backbone of LPIPS
IRSE50_FILE = "model_ir_se50.pth"              # ArcFace IR-SE50: the identity loss


@dataclass(frozen=True)
class Input:
    """One file a stage reads.

    ``what``: what the stage uses it for (the help and the errors quote it). ``also``: other
    names accepted for it (a ``.safetensors`` twin, a numbered file...).
    ``option``: the flag that names the file directly. ``network``: a loss network, looked up in
    ``--loss-models``, the checkpoint folders and the torch hub cache (:data:`.losses.NETWORKS`
    key). ``when``: the settings under which it is read ("" = always). ``optional``: used when
    present."""
    name: str
    what: str
    also: tuple[str, ...] = ()
    option: str | None = None
    network: str | None = None
    when: str = ""
    optional: bool = False
    pattern: bool = False      # ``also`` describes files (not names of them)

    def names(self) -> list[str]:
        """The file names it may have."""
        return [self.name] if self.pattern else [self.name, *self.also]

    def describe(self) -> str:
        """``name`` with its alternatives and condition, as the help shows it."""
        text = self.name + (f" (or {', '.join(self.also)})" if self.also else "")
        notes = [n for n in (self.option, self.when, "optional" if self.optional else "") if n]
        return text + (f" [{'; '.join(notes)}]" if notes else "")


FFHQ_FOR_FINETUNE = Input(STYLEGAN_FFHQ, f"rosinality's FFHQ StyleGAN2 ({STYLEGAN_FFHQ}, with its 'g', 'd' and "
                                         f"'g_ema'), the starting point of finetune-stylegan", option="--start")
FFHQ_FOR_PRETRAIN = Input(STYLEGAN_FFHQ, f"rosinality's FFHQ StyleGAN2 ({STYLEGAN_FFHQ}): pretrain builds "
                                         f"DualStyleGAN's intrinsic path from its 'g_ema' and the discriminator "
                                         f"from its 'd'", option="--start")
FFHQ_FOR_DESTYLIZE = Input(STYLEGAN_FFHQ, "rosinality's FFHQ StyleGAN2, the generator destylize renders the "
                                          "realistic faces with")
FINETUNED_FOR_DESTYLIZE = Input(FINETUNED_STYLEGAN, "destylize needs the StyleGAN2 fine-tuned on the style (written "
                                                    "by the finetune-stylegan stage)",
                                also=("the newest finetune-NNNNNN.pt",), option="--start or --model-name",
                                pattern=True)
ENCODER_FOR_DESTYLIZE = Input(ENCODER, "the z+ pSp encoder (the official checkpoint/encoder.pt), needed for destylize")
ENCODER_FOR_PRETRAIN = Input(ENCODER, "the z+ pSp encoder (the official checkpoint/encoder.pt), needed for pretrain "
                                      "(the extrinsic codes of sampled faces)")
PRETRAINED = Input(PRETRAIN, "the pretrained DualStyleGAN (generator-pretrain.pt, written by the pretrain stage)",
                   option="--start")
INSTYLE_FOR_FINETUNE = Input(INSTYLE, "finetune needs the destylized intrinsic codes (destylize writes them)",
                             also=("instyle_code.safetensors",), option="--instyle")
EXSTYLE_FOR_FINETUNE = Input(EXSTYLE, "finetune needs the exemplars' extrinsic codes (destylize writes them)",
                             also=("exstyle_code.safetensors",), option="--bank")
GENERATOR_FOR_REFINE = Input(GENERATOR, "refine-exstyle needs the style's DualStyleGAN (the official "
                                        "checkpoint/<style>/generator.pt, or our generator.safetensors)",
                             also=("generator.safetensors",), option="--start")
EXSTYLE_FOR_REFINE = Input(EXSTYLE, "refine-exstyle refines the extrinsic codes", also=("exstyle_code.safetensors",),
                           option="--bank")
INSTYLE_FOR_REFINE = Input(INSTYLE, "refine-exstyle renders each exemplar from its destylized intrinsic code "
                                        "(without it, from its own extrinsic code)",
                           also=("instyle_code.safetensors",), option="--instyle", optional=True)
BANK_FOR_SAMPLER = Input(REFINED_EXSTYLE, "the sampler learns the distribution of the extrinsic codes "
                                          "(refined_exstyle_code.npy or exstyle_code.npy)",
                         also=("refined_exstyle_code.safetensors", EXSTYLE, "exstyle_code.safetensors"),
                         option="--bank")


def missing_input(name: str, what: str, folders) -> CheckpointError:
    """The error for a file not found in ``folders``: its name, what it is for, where it may go."""
    return CheckpointError(f"missing {name}: {what}. Put it in one of: " + ", ".join(f"'{f}'" for f in folders))


def find_in(folders, name: str, what: str):
    """``name`` in the first of ``folders`` that has it, else :func:`missing_input`."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise missing_input(name, what, folders)


def vgg19(what: str, when: str = "") -> Input:
    return Input(VGG19_FILE, what, network="vgg19", when=when)


def vgg16(what: str, when: str = "") -> Input:
    return Input(VGG16_FILE, what, network="vgg16", when=when)


def irse50(what: str, when: str = "") -> Input:
    return Input(IRSE50_FILE, what, network="irse50", when=when)


__all__ = ["find_in", "missing_input", "ENCODER", "EXSTYLE", "FINETUNED_STYLEGAN", "GENERATOR", "INSTYLE", "IRSE50_FILE", "Input", "PRETRAIN",
           "REFINED_EXSTYLE", "STYLEGAN_FFHQ", "VGG16_FILE", "VGG19_FILE", "irse50", "vgg16", "vgg19"]
