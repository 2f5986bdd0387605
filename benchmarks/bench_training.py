"""Training speed: iterations per second and peak memory of every stage.

    python benchmarks/bench_training.py [--stage STAGE|all] [--size 256] [--steps N] [--batch B]
        [--device cpu|cuda] [--threads T] [--json]

Each stage runs in its own process (so the peak resident memory is that stage's), with the
deterministic fixture weights at ``--size`` (default 256: a 14-row DualStyleGAN bank / generator):

* ``sampler``: the official train_sampler.py settings (bank repeated to ~1000 codes, batch 128,
  7 Adam steps per epoch); an iteration is one Adam step, and the per-epoch noise mapping +
  nearest-neighbour search is included (whole epochs are timed). Also reports the projected time
  of the official 2 x 31248-step run.
* ``refine-exstyle``: DualStyleGAN at ``--size`` + VGG19 (perceptual + contextual losses), one
  image per batch (official default); an iteration is one optimisation step (forward through
  generator and VGG19, backward, Adam). ``--loss pixel`` variant too. Projected time for the
  official 100 steps per image.

* ``finetune-stylegan``, ``pretrain``, ``finetune`` (the GAN stages, full-width official
  models at ``--size``, fixture weights, ``--batch`` 2 by default): step 0 (warm-up, with both
  regularisers) is not timed; steps 1..N (no R1 / path-length pass: those run every 16 / 4
  steps) give ``s_per_it``; the projected official run is ``iters * s_per_it`` and leaves out
  the regularisation passes.
* ``destylize``: g' and g at ``--size``, the z+ encoder, VGG19 and IR-SE50; one image
  (official batch 1); an iteration is one optimisation step.

Timings exclude building the fixture weights and the first (warm-up) iteration (GAN stages:
reported separately, see above). Peak memory: the process's peak RSS on CPU, the CUDA
allocator's peak on GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def bench_sampler(size: int, steps: int) -> dict:
    import torch

    from pastiche_core.styles import StyleBank
    from pastiche_core.training.sampler_stage import SamplerConfig, train_sampler

    rows = 2 * int(math.log2(size)) - 2
    g = torch.Generator().manual_seed(0)
    bank = StyleBank([f"style_{i:03d}.jpg" for i in range(317)], torch.randn(317, rows, 512, generator=g))  # cartoon: 317
    n_codes = 317 * (1000 // 317)
    per_epoch = n_codes // 128
    steps = max(per_epoch, steps // per_epoch * per_epoch)  # whole epochs
    times = []

    def progress(done, total, info):
        times.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = train_sampler(bank, d, SamplerConfig(iters=steps + per_epoch, save_every=10 ** 9), progress=progress)
        wall = time.perf_counter() - t0
    # drop the first epoch of each net (warm-up), keep whole epochs
    per_net = steps + per_epoch
    timed = []
    for part in range(2):
        first = part * per_net + per_epoch  # index of the first step after the warm-up epoch
        start = times[first - 1]
        end = times[part * per_net + per_net - 1]
        timed.append((end - start, per_net - per_epoch))
    secs = sum(t for t, _ in timed)
    n = sum(k for _, k in timed)
    official_steps = 2 * int(500000 / n_codes) * per_epoch
    return {"stage": "sampler", "size": size, "rows": rows, "codes": n_codes, "batch": 128,
            "iterations": n, "it_per_s": n / secs, "s_per_it": secs / n,
            "official_run_steps": official_steps, "official_run_minutes": official_steps * secs / n / 60,
            "wall_s": wall, "final_loss": result.losses[-1], "peak_rss_mib": peak_rss_mib()}


def bench_refine(size: int, steps: int, loss: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pastiche_core.reference import fixture_model
    from pastiche_core.reference.fixture_weights import fixture_state_dict
    from pastiche_core.styles import StyleBank
    from pastiche_core.training.losses import VGG19Features, vgg19_feature_shapes
    from pastiche_core.training.refine_stage import RefineConfig, refine_exstyle_codes

    gen = fixture_model("dualstylegan", size).eval().requires_grad_(False)
    vgg = None
    if loss == "vgg":
        state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(vgg19_feature_shapes(5)).items()}
        state = {k: (v * math.sqrt(2.0 / (v.shape[1] * 9)) if k.endswith(".weight") else v) for k, v in state.items()}
        vgg = VGG19Features(5).load_features(state)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(1, gen.n_latent, 512, generator=g)
    bank = StyleBank(["style.png"], codes)
    times = []

    def progress(done, total, info):
        times.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as d:
        rgb = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(Path(d) / "style.png")
        cfg = RefineConfig(iters=steps + 1, batch=1, size=min(256, size), loss=loss, save_every=10 ** 9)
        t0 = time.perf_counter()
        refine_exstyle_codes(gen, bank, None, d, Path(d) / "out", cfg, vgg=vgg, progress=progress)
        wall = time.perf_counter() - t0
    secs = times[-1] - times[0]
    return {"stage": "refine-exstyle", "size": size, "loss": loss, "batch": 1, "iterations": steps,
            "it_per_s": steps / secs, "s_per_it": secs / steps, "official_minutes_per_image": 100 * secs / steps / 60,
            "wall_s": wall, "peak_rss_mib": peak_rss_mib()}


def _fixture(model):
    import torch

    from pastiche_core.reference.fixture_weights import fixture_state_dict

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()})
    return model


def _vgg(n_slices: int):
    import torch

    from pastiche_core.reference.fixture_weights import fixture_state_dict
    from pastiche_core.training.losses import VGG19Features, vgg19_feature_shapes

    state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(vgg19_feature_shapes(n_slices)).items()}
    state = {k: (v * math.sqrt(2.0 / (v.shape[1] * 9)) if k.endswith(".weight") else v) for k, v in state.items()}
    return VGG19Features(n_slices).load_features(state)


def _id_loss():
    import torch

    from pastiche_core.models import Backbone
    from pastiche_core.training.losses import IDLoss

    with torch.device("meta"):
        net = Backbone(input_size=112, num_layers=50, mode="ir_se")
    from pastiche_core.reference.fixture_weights import fixture_state_dict

    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()}, assign=True)
    return IDLoss(net)


def _peak(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return peak_rss_mib()


def bench_gan(stage: str, size: int, steps: int, batch: int, device: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pastiche_core.models import DualStyleGAN, Generator
    from pastiche_core.models.discriminator import Discriminator
    from pastiche_core.reference import fixture_encoder
    from pastiche_core.styles import StyleBank
    from pastiche_core.training.gan import GANConfig

    official = {"finetune-stylegan": 600, "pretrain": 3000 // 10 * 2 + 3000, "finetune": 1500}[stage]
    times = []

    def progress(done, total, info):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        g = _fixture(Generator(size))
        torch.save({"g": g.state_dict(), "g_ema": g.state_dict(), "d": _fixture(Discriminator(size)).state_dict()},
                   d / "stylegan2-ffhq-config-f.pt")
        (d / "images").mkdir()
        rng = np.random.default_rng(0)
        names = [f"im_{i}.png" for i in range(max(4, batch))]
        for name in names:
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(d / "images" / name)
        cfg = GANConfig(iters=min(steps, 3) + 1, batch=batch, save_every=10 ** 9, device=device)
        t0 = time.perf_counter()
        if stage == "finetune-stylegan":
            from pastiche_core.training.stylegan_stage import finetune_stylegan

            finetune_stylegan(d, d / "images", d / "out", cfg, progress=progress)
        elif stage == "pretrain":
            from pastiche_core.training.dualstylegan_stage import pretrain_dualstylegan

            pretrain_dualstylegan(d, d / "images", d / "out", fixture_encoder(size, "z+"), _vgg(3), cfg,
                                  progress=progress)
        else:
            from pastiche_core.training.dualstylegan_stage import finetune_dualstylegan

            gen = _fixture(DualStyleGAN(size))
            torch.save({"g": gen.state_dict(), "g_ema": gen.state_dict(), "d": _fixture(Discriminator(size)).state_dict()},
                       d / "generator-pretrain.pt")
            codes = torch.randn(len(names), gen.n_latent, 512, generator=torch.Generator().manual_seed(0))
            bank = StyleBank(names, codes, space="z+")
            finetune_dualstylegan(d, d / "images", d / "out", _vgg(3), _id_loss(), bank, bank, cfg, progress=progress)
        wall = time.perf_counter() - t0
    plain = (times[-1] - times[0]) / (len(times) - 1)
    return {"stage": stage, "size": size, "batch": batch, "device": device, "iterations": len(times) - 1,
            "it_per_s": 1 / plain, "s_per_it": plain, "s_first": times[0] - t0,
            "official_iters": official, "official_hours": official * plain / 3600,
            "wall_s": wall, "peak_mib": _peak(device)}


def bench_destylize(size: int, steps: int, device: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pastiche_core.models import Generator
    from pastiche_core.reference import fixture_encoder
    from pastiche_core.training.destylize_stage import DestylizeConfig, destylize

    times = []

    def progress(done, total, info):
        times.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "images").mkdir()
        Image.fromarray((np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)).save(
            d / "images" / "style.png")
        g = _fixture(Generator(size)).eval().requires_grad_(False)
        cfg = DestylizeConfig(iters=steps + 1, batch=1, save_every=10 ** 9, device=device)
        t0 = time.perf_counter()
        destylize(g, g, fixture_encoder(size, "z+"), d / "images", d / "out", cfg, vgg=_vgg(5), id_loss=_id_loss(),
                  progress=progress)
        wall = time.perf_counter() - t0
    secs = (times[-1] - times[0]) / (len(times) - 1)
    return {"stage": "destylize", "size": size, "batch": 1, "device": device, "iterations": steps,
            "it_per_s": 1 / secs, "s_per_it": secs, "official_minutes_per_image": 300 * secs / 60, "wall_s": wall,
            "peak_mib": _peak(device)}


from pastiche_core.training import GAN_STAGES  # noqa: E402 (after the sys.path set-up above)

ALL_STAGES = ("sampler", "refine-exstyle", "destylize", *GAN_STAGES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="all", choices=["all", *ALL_STAGES])
    parser.add_argument("--batch", type=int, default=2, help="GAN stages: global batch (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (sampler/refine: CPU only here)")
    parser.add_argument("--loss", default=None, choices=["vgg", "pixel"], help="refine-exstyle only (default: both)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="timed iterations (sampler: rounded to epochs)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.stage == "all" or (args.stage == "refine-exstyle" and args.loss is None):
        jobs = ([["--stage", "sampler"]] if args.stage == "all" else []) + \
            [["--stage", "refine-exstyle", "--loss", loss] for loss in ("vgg", "pixel")]
        if args.stage == "all":
            jobs += [["--stage", st, "--device", args.device, "--batch", str(args.batch)]
                     for st in ("destylize", *GAN_STAGES)]
        rows = []
        for job in jobs:
            cmd = [sys.executable, __file__, *job, "--size", str(args.size), "--json"]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.stage == "sampler":
            rows = [bench_sampler(args.size, args.steps or 14)]
        elif args.stage in GAN_STAGES:
            rows = [bench_gan(args.stage, args.size, args.steps or 2, args.batch, args.device)]
        elif args.stage == "destylize":
            rows = [bench_destylize(args.size, args.steps or 2, args.device)]
        else:
            rows = [bench_refine(args.size, args.steps or 3, args.loss)]
        if args.json:
            print(json.dumps(rows[0]))
            return 0

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    import torch

    print(f"CPU training benchmark, size {args.size}, torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    for r in rows:
        label = r["stage"] + (f" ({r['loss']} loss)" if "loss" in r else "")
        if "batch" in r and r["stage"] in GAN_STAGES:
            label += f" (batch {r['batch']}, {r['device']})"
        if r["stage"] == "sampler":
            extra = f"official run ({r['official_run_steps']} steps) ~{r['official_run_minutes']:.0f} min"
        elif r["stage"] in GAN_STAGES:
            extra = (f"set-up + step 0 {r['s_first']:.0f} s; official {r['official_iters']} iterations "
                     f"~{r['official_hours']:.1f} h + regularisers")
        elif r["stage"] == "destylize":
            extra = f"official 300 steps/image ~{r['official_minutes_per_image']:.1f} min"
        else:
            extra = f"official 100 steps/image ~{r['official_minutes_per_image']:.1f} min"
        peak = r.get("peak_rss_mib", r.get("peak_mib"))
        print(f"  {label:40s} {r['it_per_s']:8.4f} it/s  ({r['s_per_it']:.2f} s/it)  peak "
              f"{peak:7.0f} MiB  {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
