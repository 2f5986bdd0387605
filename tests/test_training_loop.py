"""The one resumable loop (training/loop.py) every stage runs in.

A state written before the loop was shared by every stage (the committed
``fixtures/training/refine_state_v1.pt``, a refine-exstyle run stopped in the middle of its
second exemplar, made by the code of the commit before training/loop.py) still resumes: its
record is restored as saved, and the refined codes equal those of an uninterrupted run of
today's code (to float rounding: the generator's fast path has changed its rounding since).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pastiche_core.models import DualStyleGAN
from pastiche_core.reference.fixture_weights import fixture_state_dict
from pastiche_core.styles import StyleBank
from pastiche_core.training.checkpointing import load_state, state_path

FIXTURES = Path(__file__).parent / "fixtures" / "training"
OLD_REFINE_STATE = FIXTURES / "refine_state_v1.pt"
NAMES = ["a.png", "b.png"]

pytestmark = pytest.mark.usefixtures("single_thread")


def refine_setup(root: Path) -> dict:
    """A 32 px DualStyleGAN with fixture-recipe weights, two codes and their target images
    (all made from fixed seeds, so the fixture state's run can be made again)."""
    gen = DualStyleGAN(32, res_index=6)  # 7 structure rows, as the official models
    shapes = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    gen.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()})
    gen.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ex = torch.randn(len(NAMES), gen.n_latent, 512, generator=g)
    ins = torch.randn(len(NAMES), gen.n_latent, 512, generator=g)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        target = gen(ins, gen.map_exstyle(ex + 0.7 * torch.randn(ex.shape, generator=g)), interp_weights=[1.0] * 8)
    for name, img in zip(NAMES, target):
        arr = ((img.clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(arr).save(data / name, format="PNG")
    return {"generator": gen, "exstyle": StyleBank(NAMES, ex), "instyle": StyleBank(NAMES, ins), "data": data}


def refine_config():
    from pastiche_core.training.refine_stage import RefineConfig

    return RefineConfig(iters=3, batch=1, size=32, loss="pixel", lr_color=0.1, lr_structure=0.005, save_every=100)


def run_refine(s: dict, out: Path, **kw):
    from pastiche_core.training.refine_stage import refine_exstyle_codes

    return refine_exstyle_codes(s["generator"], s["exstyle"], s["instyle"], s["data"], out, refine_config(), **kw)


def test_a_state_written_before_the_shared_loop_resumes(tmp_path):
    s = refine_setup(tmp_path)
    reference = run_refine(s, tmp_path / "ref")
    out = tmp_path / "old"
    state_path(out, "refine-exstyle").parent.mkdir(parents=True)
    shutil.copyfile(OLD_REFINE_STATE, state_path(out, "refine-exstyle"))
    old = load_state(state_path(out, "refine-exstyle"))
    assert old["step"] == 4 and old["extra"]["ranks"] is not None  # stopped inside the second exemplar
    saved_losses = old["extra"]["losses"].tolist()
    resumed = run_refine(s, out, resume=True)
    assert resumed.finished and resumed.steps_done == 6
    assert resumed.losses[:4] == saved_losses  # the old state's record, restored as it was
    # The generator's fast path has since changed its float rounding (Winograd, one-pass
    # modulated weights), so today's uninterrupted run agrees to rounding, not bit for bit (a
    # state written by today's code resumes bit for bit: test_training_refine).
    torch.testing.assert_close(resumed.losses, reference.losses, rtol=1e-6, atol=0)
    torch.testing.assert_close(StyleBank.load(out / "refined_exstyle_code.npy").codes,
                               StyleBank.load(tmp_path / "ref" / "refined_exstyle_code.npy").codes, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# One source of defaults: the stages' Configs make the CLI flags and the node's inputs
# --------------------------------------------------------------------------------------------
def train_parser():
    import argparse

    from pastiche_core.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser


def test_every_config_option_has_a_cli_flag_with_its_official_defaults():
    from dataclasses import fields

    from pastiche_core.training.options import CONFIGS, default, make_config, user_options

    parser = train_parser()
    actions = {a.dest: a for a in parser._actions}
    for stage, cls in CONFIGS.items():
        opts = user_options(cls)
        assert opts, stage
        for name in opts:
            action = actions[name]
            assert action.default is None  # unset: the stage's own default applies
            assert f"--{name.replace('_', '-')}" in action.option_strings
            value = default(cls, name)
            if value is not None:
                assert f"{stage} {value}" in action.help, (stage, name, action.help)
        # no flag given: exactly the Config's defaults
        args = parser.parse_args([stage])
        cfg = make_config(stage, {n: getattr(args, n) for n in opts})
        assert cfg == cls(), stage
        assert {f.name for f in fields(cls)} >= set(opts)


def test_flags_reach_the_config_and_old_names_still_work():
    from pastiche_core.training.options import make_config
    from pastiche_core.training.runner import stage_config

    parser = train_parser()
    args = parser.parse_args(["finetune", "--cx-loss", "0.5", "--l2-reg-loss", "0.1", "--iters", "7", "--augment"])
    cfg = make_config("finetune", vars(args))
    assert (cfg.contextual_loss, cfg.l2_reg_loss, cfg.iters, cfg.augment) == (0.5, 0.1, 7, True)
    assert cfg.style_loss == 0.25 and cfg.batch == 4
    # option names of earlier versions (the runner's callers, saved states)
    assert make_config("finetune", {"CX_loss": 0.3, "L2_reg_loss": 0.2}).contextual_loss == 0.3
    # destylize's identity weight is an option now (it was read but never set)
    args = parser.parse_args(["destylize", "--id-weight", "0"])
    assert stage_config("destylize", vars(args)).id_weight == 0.0
    # refine-exstyle: the preset gives the two rates' defaults; a flag wins
    assert (stage_config("refine-exstyle", {"lr_preset": "readme"}).lr_color,
            stage_config("refine-exstyle", {"lr_preset": "readme", "lr_color": 0.3}).lr_color) == (0.1, 0.3)
    assert stage_config("refine-exstyle", {}).lr_color == 0.01


def test_a_state_with_old_option_names_resumes(tmp_path):
    """States written before the rename (finetune's CX_loss / L2_reg_loss run settings) pass the
    resume check; other settings are still refused."""
    from pastiche_core.errors import CheckpointError
    from pastiche_core.training import distributed as D
    from pastiche_core.training.checkpointing import make_state, save_state
    from pastiche_core.training.loop import Loop

    save_state(state_path(tmp_path, "finetune"),
               make_state("finetune", 1, 2, config={"CX_loss": 0.25, "L2_reg_loss": 0.015},
                          extra={"losses": torch.zeros(1, dtype=torch.float64)}))
    ctx = D.setup("cpu")
    keys = ["contextual_loss", "l2_reg_loss"]
    loop = Loop("finetune", tmp_path, ctx, 2, {"contextual_loss": 0.25, "l2_reg_loss": 0.015}, 10)
    assert loop.load(True, keys)["step"] == 1 and loop.losses == [0.0]
    other = Loop("finetune", tmp_path, ctx, 2, {"contextual_loss": 0.5, "l2_reg_loss": 0.015}, 10)
    with pytest.raises(CheckpointError, match="contextual_loss: checkpoint 0.25, now 0.5"):
        other.load(True, keys)


def test_node_inputs_come_from_the_config():
    import sys

    ROOT = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(Path(__file__).parent / "comfy_stub"))
    try:
        import importlib.util

        from pastiche_core.training.options import FinetuneConfig, default, user_options

        spec = importlib.util.spec_from_file_location("pastiche_loop_pack", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["pastiche_loop_pack"] = pack
        spec.loader.exec_module(pack)
        node = next(n for n in pack.NODES if n.GET_SCHEMA().node_id == "PasticheFineTuneStage")
        req = node.GET_NODE_INFO_V1()["input"]["required"]
        training = sys.modules["pastiche_loop_pack.nodes.training"]
        names = training.loss_weights()
        assert list(names) == ["style_loss", "contextual_loss", "perceptual_loss", "identity_loss", "l2_reg_loss"]
        options = user_options(FinetuneConfig)
        for node_name, field_name in names.items():
            spec_ = req[node_name][1]
            assert spec_["default"] == default(FinetuneConfig, field_name)
            assert options[field_name].metadata["help"].removeprefix("finetune: ") in spec_["tooltip"]
        for stage, iters in (("finetune-stylegan", 600), ("destylize", 300), ("finetune", 1500)):
            assert f"{stage} {iters}" in req["iterations"][1]["tooltip"]
    finally:
        sys.path.remove(str(Path(__file__).parent / "comfy_stub"))
        for k in list(sys.modules):
            if k.split(".")[0] in ("folder_paths", "comfy", "comfy_api") or k.startswith("pastiche_loop_pack"):
                del sys.modules[k]


# --------------------------------------------------------------------------------------------
# the stage contract: resume keys declared on the Config, input files named by the stage
# --------------------------------------------------------------------------------------------
def test_resume_keys_are_declared_on_the_config_and_enforced(tmp_path):
    """A setting declared ``resume=True`` refuses a resume with another value; one that is not
    (how often to checkpoint) may change; every key is in the saved run config."""
    from dataclasses import replace

    from pastiche_core.errors import CheckpointError
    from pastiche_core.training.options import FinetuneConfig, RefineConfig, resume_keys
    from pastiche_core.training.refine_stage import refine_exstyle_codes

    keys = resume_keys(FinetuneConfig)
    assert {"style_loss", "contextual_loss", "perc_loss", "id_loss", "l2_reg_loss", "subspace_freq", "seed",
            "names"} <= set(keys)
    assert not {"save_every", "sample_every", "snapshot_every", "device"} & set(keys)
    assert "cx_band_width" in resume_keys(RefineConfig) and "save_every" not in resume_keys(RefineConfig)

    s = refine_setup(tmp_path)
    out = tmp_path / "out"
    first = refine_exstyle_codes(s["generator"], s["exstyle"], s["instyle"], s["data"], out, refine_config(),
                                 should_stop=lambda: True)
    assert first.stopped and first.steps_done == 0
    saved = load_state(state_path(out, "refine-exstyle"), "refine-exstyle")["config"]
    assert set(resume_keys(RefineConfig)) <= set(saved)
    with pytest.raises(CheckpointError, match="cx_band_width: checkpoint 0.2, now 0.3"):
        refine_exstyle_codes(s["generator"], s["exstyle"], s["instyle"], s["data"], out,
                             replace(refine_config(), cx_band_width=0.3), resume=True)
    done = refine_exstyle_codes(s["generator"], s["exstyle"], s["instyle"], s["data"], out,
                                replace(refine_config(), save_every=1), resume=True)
    assert not done.stopped and done.steps_done == 2 * refine_config().iters


def _one_image_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "a.png")
    return folder


def test_every_stage_names_its_input_files_in_the_help_and_the_first_missing_one(tmp_path):
    """``inputs()`` is what the help lists and what the lookups report: with nothing in the
    checkpoint folders, each stage stops on its first input, naming it and what it is for."""
    from pastiche_core.errors import CheckpointError
    from pastiche_core.training.runner import run_stage
    from pastiche_core.training.stages import TRAINING_STAGES

    result = subprocess.run([sys.executable, "-m", "pastiche_core", "train", "--help"], capture_output=True, text=True,
                            check=True)
    help_text = " ".join(result.stdout.split())
    data = _one_image_folder(tmp_path / "data")
    empty = tmp_path / "checkpoints"
    empty.mkdir()
    for name, stage in TRAINING_STAGES.items():
        assert f"{name} {stage.summary}" in help_text
        for inp in stage.inputs():
            assert inp.describe() in help_text, (name, inp.name)
        first = stage.inputs(stage.config())[0]
        with pytest.raises(CheckpointError) as err:
            run_stage(name, checkpoints=empty, out=tmp_path / name, data=data if stage.data else None,
                      options={"face_check": False})
        message = str(err.value)
        assert first.what in message and any(f"missing {n}" in message for n in first.names()), (name, message)


def test_the_files_a_stage_reads_follow_its_settings():
    from dataclasses import replace

    from pastiche_core.training.stages import TRAINING_STAGES

    def networks(stage, **settings):
        spec = TRAINING_STAGES[stage]
        return [inp.name for inp in spec.inputs(replace(spec.config(), **settings)) if inp.network]

    assert networks("destylize") == ["vgg16-397923af.pth", "model_ir_se50.pth"]  # LPIPS + identity: official
    assert networks("destylize", loss="vgg", id_weight=0.0) == ["vgg19-dcbb9e9d.pth"]
    assert networks("destylize", loss="pixel", id_weight=0.0) == []
    assert networks("refine-exstyle") == ["vgg16-397923af.pth", "vgg19-dcbb9e9d.pth"]  # LPIPS + CX on VGG19
    assert networks("refine-exstyle", loss="pixel") == []
    assert networks("finetune") == ["vgg19-dcbb9e9d.pth", "model_ir_se50.pth"]
    assert networks("sampler") == []


def test_the_train_help_loads_no_torch():
    """The stage list of `train --help` is made from the stages and their inputs without loading
    torch (the help stays instant; the heavy modules load when a stage runs)."""
    code = ("import sys, pastiche_core.commands.train as t, pastiche_core.training.stages as s; "
            "assert 'finetune-stylegan' in t.__doc__ and s.TRAINING_STAGES; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
