"""Our LPIPS (pastiche_core/training/lpips.py) against the official LPIPS, printed per case.

    python benchmarks/lpips_parity.py

The official distances are tests/fixtures/lpips/lpips_vgg_official.npz, computed by the official
DualStyleGAN repository's ``lpips.PerceptualLoss(model="net-lin", net="vgg")`` with fixture VGG16
weights (tests/fixtures/lpips/make_lpips_fixture.py says how). Prints the max abs difference of
the distances (and of the per-layer terms in float32) for each case and dtype, and the time of
one forward. The tests (tests/test_training_lpips.py) hold the same comparison to 2e-7 / 1e-12.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "lpips"
CASES = ("b2_256", "b3_64", "b2_40x56")


def fixture_backbone() -> dict[str, torch.Tensor]:
    """The fixture recipe over torchvision's VGG16 features.* keys, He-scaled (as the fixture)."""
    from pastiche_core.reference.fixture_weights import fixture_state_dict

    shapes = {k: tuple(v) for k, v in json.loads((FIX / "vgg16_torchvision_features.json").read_text())["features"].items()}
    return {k: torch.from_numpy((v * np.float32(math.sqrt(2.0 / (v.shape[1] * 9)))).astype(np.float32)
                                if k.endswith(".weight") else v) for k, v in fixture_state_dict(shapes).items()}


def main() -> int:
    from pastiche_core.training import lpips as L

    torch.set_num_threads(2)
    official = np.load(FIX / "lpips_vgg_official.npz")
    model = L.LPIPS().load_backbone(fixture_backbone()).load_heads(L.load_heads_file())
    for dtype in (torch.float32, torch.float64):
        net = model.to(dtype)
        for case in CASES:
            key = f"out_{case}" + ("_f64" if dtype == torch.float64 else "")
            if key not in official:
                continue
            x, y = (torch.from_numpy(official[f"in_{case}_{s}"]).to(dtype) / 127.5 - 1 for s in "xy")
            with torch.no_grad():
                t0 = time.perf_counter()
                d = net(x, y)
                seconds = time.perf_counter() - t0
                row = {"case": case, "dtype": str(dtype).replace("torch.", ""),
                       "max_abs_diff": float(np.abs(d.numpy() - official[key]).max()), "seconds": round(seconds, 3)}
                if dtype == torch.float32:
                    layers = torch.stack(net.distance(net.features(x), net.features(y), per_layer=True)).numpy()
                    row["max_abs_diff_layers"] = float(np.abs(layers - official[f"out_{case}_layers"]).max())
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
