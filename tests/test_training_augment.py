"""Adaptive discriminator augmentation: pastiche_core.training.augment."""
import io
import json
import math

import pytest
import torch

from pastiche_core.training import augment as ada
from pastiche_core.training.augment import AdaptiveAugment, augment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b=8, c=3, h=16, w=16, seed=0, dtype=torch.float32):
    return torch.randn(b, c, h, w, generator=_gen(seed), dtype=dtype)


def _per_sample_max(a, b):
    return (a - b).abs().flatten(1).amax(1)


# ----------------------------------------------------------------------------- augment


def test_p_zero_is_identity_and_draws_nothing():
    x = _images()
    g = _gen(1)
    before = g.get_state()
    assert augment(x, 0.0, g) is x
    assert torch.equal(g.get_state(), before)


def test_p_one_changes_every_sample_keeps_shape_dtype_finite():
    x = _images(b=16, h=16, w=24)
    y = augment(x, 1.0, _gen(2))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert (_per_sample_max(y, x) > 1e-3).all()


def test_reproducible_from_generator():
    x = _images()
    a = augment(x, 0.7, _gen(3))
    b = augment(x, 0.7, _gen(3))
    c = augment(x, 0.7, _gen(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the global RNG is used when no generator is given
    torch.manual_seed(5)
    d = augment(x, 0.7)
    torch.manual_seed(5)
    assert torch.equal(d, augment(x, 0.7))


def test_gradient_and_double_backward():
    x = _images(b=4).requires_grad_(True)
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus(), torch.nn.Conv2d(4, 1, 3))
    out = d(augment(x, 1.0, _gen(6))).sum()
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad.flatten(1).abs().sum(1) > 0).all()  # every sample receives gradient
    grad.pow(2).flatten(1).sum(1).mean().backward()  # R1-style penalty
    for conv in (d[0], d[2]):  # (the last bias does not affect the gradient w.r.t. x)
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
        assert conv.weight.grad.abs().sum() > 0


def test_gradcheck_and_gradgradcheck_float64():
    x = _images(b=2, c=1, h=5, w=4, dtype=torch.float64).requires_grad_(True)
    fn = lambda t: augment(t, 0.8, _gen(7))  # noqa: E731 - fresh generator: same transform every call
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_float64_input_matches_float32():
    x = _images(dtype=torch.float64)
    y64 = augment(x, 0.9, _gen(8))
    assert y64.dtype == torch.float64 and torch.isfinite(y64).all()
    y32 = augment(x.float(), 0.9, _gen(8))
    assert torch.allclose(y64.float(), y32, atol=1e-4)


def test_half_input_keeps_dtype():
    y = augment(_images().to(torch.bfloat16), 1.0, _gen(9))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_invalid_arguments():
    x = _images()
    with pytest.raises(ValueError):
        augment(x, 1.5)
    with pytest.raises(ValueError):
        augment(x, -0.1)
    with pytest.raises(ValueError):
        augment(x[0], 0.5)
    with pytest.raises(TypeError):
        augment(x.to(torch.uint8), 0.5)


def test_untransformed_samples_are_kept_exactly():
    x = _images(b=64)
    y = augment(x, 0.05, _gen(10))
    kept = _per_sample_max(y, x) == 0
    # P(no transform) = 0.95**6 * (1 - p_rot)**2 = 0.95**7 ~ 0.70
    assert 0.4 < kept.float().mean() < 0.95
    assert (~kept).any()


def test_flip_only_statistics():
    n = 2000
    x = torch.randn(n, 1, 4, 4, generator=_gen(11))
    for p, expected in ((1.0, 0.5), (0.5, 0.25)):
        y = ada._augment(x, p, _gen(12), ("xflip",))
        same = _per_sample_max(y, x) < 1e-5
        flipped = _per_sample_max(y, x.flip(-1)) < 1e-5
        assert (same ^ flipped).all()  # exactly one of the two, never a blend
        sigma = math.sqrt(expected * (1 - expected) / n)
        assert abs(flipped.float().mean().item() - expected) < 5 * sigma


def test_rotate90_and_integer_translation_are_exact():
    x = torch.randn(64, 2, 16, 16, generator=_gen(13))
    y = ada._augment(x, 1.0, _gen(14), ("rotate90",))
    match = torch.stack([_per_sample_max(y, torch.rot90(x, k, (2, 3))) < 1e-5 for k in range(4)], 1)
    assert match.any(1).all() and match.any(0).all()  # every sample is some rotation, all 4 occur

    y = ada._augment(x, 1.0, _gen(15), ("xint",))
    m = 2  # round(0.125 * 16)
    inner = y[..., m:-m, m:-m]
    shifts = [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    match = torch.stack([_per_sample_max(inner, x[..., m + dy:16 - m + dy, m + dx:16 - m + dx]) < 1e-5
                         for dy, dx in shifts], 1)
    assert match.any(1).all()
    assert match.any(0).sum() > 5  # several different shifts occur


# ----------------------------------------------------------------------------- AdaptiveAugment


def test_tune_raises_p_with_exact_increment():
    aug = AdaptiveAugment(target=0.6, length=1000, update_every=4)
    pred = torch.ones(5, 1)  # D confident on reals: overfitting
    for _ in range(3):
        assert aug.tune(pred) == 0.0  # no update before update_every calls
    p = aug.tune(pred)
    assert p == pytest.approx(4 * 5 / 1000) and aug.p == p
    assert aug.r_t == 1.0
    for _ in range(4):
        aug.tune(pred)
    assert aug.p == pytest.approx(2 * 4 * 5 / 1000)


def test_tune_keeps_zero_and_lowers_p_when_negative():
    aug = AdaptiveAugment(target=0.6, length=1000, update_every=2)
    for _ in range(10):
        aug.tune(-torch.ones(3, 1))
    assert aug.p == 0.0
    aug = AdaptiveAugment(target=0.6, length=1000, update_every=2, p=0.5)
    # mean sign 0.5 < 0.6 (3 positive, 1 negative; zeros would count as 0)
    aug.tune(torch.tensor([[1.0], [2.0], [3.0], [-1.0]]))
    assert aug.tune(torch.tensor([[1.0], [2.0], [3.0], [-1.0]])) == pytest.approx(0.5 - 8 / 1000)
    assert aug.r_t == pytest.approx(0.5)


def test_tune_no_change_at_target():
    aug = AdaptiveAugment(target=0.5, length=100, update_every=1, p=0.3)
    assert aug.tune(torch.tensor([1.0, 1.0, 1.0, -1.0])) == 0.3


def test_p_stays_in_unit_interval():
    aug = AdaptiveAugment(target=0.6, length=7, update_every=1)
    g = _gen(16)
    for i in range(200):
        sign = 1.0 if (i // 25) % 2 == 0 else -1.0
        p = aug.tune(sign * torch.rand(3, 1, generator=g))
        assert 0.0 <= p <= 1.0
    assert AdaptiveAugment(length=1, update_every=1, p=1.0).tune(torch.ones(4)) == 1.0


def test_state_dict_round_trip_mid_accumulation():
    aug = AdaptiveAugment(target=0.6, length=500, update_every=3)
    preds = [torch.randn(6, 1, generator=_gen(20 + i)) + 1.5 for i in range(10)]
    for pr in preds[:4]:
        aug.tune(pr)  # one update done, one call pending
    state = aug.state_dict()
    json.dumps(state)  # plain values only
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    other = AdaptiveAugment(target=0.1, length=9, update_every=5)
    other.load_state_dict(state)
    assert other.state_dict() == aug.state_dict()
    for pr in preds[4:]:
        assert other.tune(pr) == aug.tune(pr)
    assert aug.p > 0


def test_tune_sums_over_processes(monkeypatch):
    # simulate 2 ranks seeing identical statistics: all_reduce doubles the buffer
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.mul_(2))
    aug = AdaptiveAugment(target=0.6, length=1000, update_every=2)
    aug.tune(torch.ones(4, 1))
    assert aug.tune(torch.ones(4, 1)) == pytest.approx(2 * 2 * 4 / 1000)


def test_invalid_config():
    for kwargs in ({"length": 0}, {"update_every": 0}, {"p": 1.5}, {"target": 2.0}):
        with pytest.raises(ValueError):
            AdaptiveAugment(**kwargs)
