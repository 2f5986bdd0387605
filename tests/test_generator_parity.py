"""Every official generator fixture case at 256, through the replay code path, both op paths.

Tolerance (FIXTURES.md): float32 outputs, atol 2e-4 on raw unclamped outputs; that is ~5x the
official code's own float32-vs-float64 spread, far below what a structural mistake causes.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from pastiche_core.reference.replay import case_kind, fixture_model, load_case, replay_case

CASES = sorted((Path(__file__).parent / "fixtures" / "generator_256").glob("*.npz"))
ATOL = 2e-4


@pytest.fixture(scope="module")
def models():
    return {kind: fixture_model(kind, 256) for kind in ("dualstylegan", "stylegan2")}


def test_all_cases_present():
    assert len(CASES) == 16


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_case_matches_official(case, path, models):
    arrays, meta = load_case(case)
    model = models[case_kind(meta)].use_fast_path(path == "fast")
    with torch.inference_mode():
        outputs = replay_case(arrays, meta, model)
    expected = [k for k in arrays if k.startswith("out_")]
    assert expected
    for key in expected:
        assert outputs[key].shape == arrays[key].shape, key
        err = np.abs(outputs[key] - arrays[key].astype(np.float32)).max()
        assert err <= ATOL, f"{case.stem} {key}: max |diff| {err:.3g} > {ATOL}"


def test_replay_cli_writes_case_keys(tmp_path):
    import subprocess
    import sys

    case = CASES[0]
    out = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, "-m", "pastiche_core.reference", "replay", str(case), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    arrays, _ = load_case(case)
    with np.load(out) as z:
        written = {k for k in z.files if k.startswith("out_")}
        assert written == {k for k in arrays if k.startswith("out_")}
        for k in written:
            assert np.abs(z[k] - arrays[k]).max() <= ATOL


def test_replay_cli_bad_case(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    proc = subprocess.run([sys.executable, "-m", "pastiche_core.reference", "replay", str(bad), "--out",
                           str(tmp_path / "o.npz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.npz").exists()
