"""Fast ops against the plain reference ops, on each dtype and device, tolerances per dtype."""
import numpy as np
import pytest
import torch

from pastiche_core.models.ops import blur_fast, make_fir_kernel, upfirdn2d_reference, upsample2x_fast
from pastiche_core.models.stylegan2 import Generator, ModulatedConv2d, StyledConv

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Atol relative to outputs of unit scale; bf16 keeps 8 mantissa bits.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 6e-2}
DTYPES = list(TOL)


def naive_upfirdn2d(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Independent loop version of the definition, for checking the reference itself."""
    c, h, w = x.shape
    upx = np.zeros((c, h * up, w * up), x.dtype)
    upx[:, ::up, ::up] = x
    p0, p1 = pad
    padded = np.pad(upx, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    padded = padded[:, max(-p0, 0): padded.shape[1] - max(-p1, 0), max(-p0, 0): padded.shape[2] - max(-p1, 0)]
    kf = k[::-1, ::-1]
    kh, kw = k.shape
    oh, ow = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    out = np.zeros((c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = (padded[:, i: i + kh, j: j + kw] * kf).sum((1, 2))
    return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (1, 0)), (1, 1, (-1, 2))])
def test_upfirdn2d_reference_matches_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 9))
    k = rng.standard_normal((4, 4))  # asymmetric: checks the flip
    ours = upfirdn2d_reference(torch.from_numpy(x)[None], torch.from_numpy(k), up, down, pad)[0].numpy()
    ref = naive_upfirdn2d(x, k, up, down, pad)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_blur_and_upsample_fast(device, dtype):
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64).to(device)
    for gain, fast, ref in [
        (4, lambda x, k: blur_fast(x, k, (1, 1)), lambda x, k: upfirdn2d_reference(x, k, pad=(1, 1))),
        (1, lambda x, k: blur_fast(x, k, (2, 1)), lambda x, k: upfirdn2d_reference(x, k, pad=(2, 1))),
        (4, upsample2x_fast, lambda x, k: upfirdn2d_reference(x, k, up=2, pad=(2, 1))),
    ]:
        k = make_fir_kernel(gain=gain).to(device, torch.float64)
        expected = ref(x, k)
        got = fast(x.to(dtype), k.to(dtype)).double()
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= TOL[dtype] * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("upsample,k,demod", [(False, 3, True), (True, 3, True), (False, 1, False)])
def test_modulated_conv_fast_equals_reference(device, dtype, batch, upsample, k, demod):
    torch.manual_seed(0)
    conv = ModulatedConv2d(16, 8, k, 32, demodulate=demod, upsample=upsample).to(device, torch.float64)
    x = torch.randn(batch, 16, 8, 8, dtype=torch.float64, device=device)
    style = torch.randn(batch, 32, dtype=torch.float64, device=device)
    expected = conv.forward_reference(x, style)
    conv = conv.to(dtype)
    got = conv(x.to(dtype), style.to(dtype)).double()
    assert got.shape == (batch, 8, 16 if upsample else 8, 16 if upsample else 8)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= TOL[dtype] * max(scale, 1) * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_styled_conv_fast_folds_gain_bias_and_noise(device, dtype):
    torch.manual_seed(1)
    layer = StyledConv(8, 8, 3, 16, upsample=True).to(device, torch.float64)
    with torch.no_grad():
        layer.noise.weight.fill_(0.3)
        layer.activate.bias.normal_()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, device=device)
    s = torch.randn(2, 16, dtype=torch.float64, device=device)
    noise = torch.randn(1, 1, 8, 8, dtype=torch.float64, device=device)
    layer.fast = False
    expected = layer(x, s, noise)
    layer.fast = True
    layer = layer.to(dtype)
    got = layer(x.to(dtype), s.to(dtype), noise.to(dtype)).double()
    assert (got - expected).abs().max().item() <= TOL[dtype] * 10


@pytest.mark.parametrize("device", DEVICES)
def test_generator_fast_path_and_channels_last(device):
    torch.manual_seed(2)
    g = Generator(32, style_dim=64, n_mlp=2).to(device).eval()
    z = torch.randn(2, 64, device=device)
    with torch.no_grad():
        fast = g(z)
        ref = g.use_fast_path(False)(z)
        g.use_fast_path(True)
        cl = g.use_fast_path(True, channels_last=True)(z)
    assert fast.shape == (2, 3, 32, 32)
    assert (fast - ref).abs().max().item() < 1e-4
    assert (cl - fast).abs().max().item() < 1e-4


def test_generator_rejects_bad_codes():
    g = Generator(32, style_dim=64, n_mlp=2)
    with pytest.raises(ValueError, match=r"intrinsic code must be \[B, 64\] or \[B, 8, 64\]"):
        g(torch.randn(1, 5, 64))
    with pytest.raises(ValueError, match="noise must be"):
        g(torch.randn(1, 64), noise="sometimes")
    with pytest.raises(ValueError, match="noise map 0"):
        g(torch.randn(1, 64), noise=[torch.randn(1, 1, 3, 3)] + [None] * 6)


# Reduced precision keeps the image within these PSNRs of fp32 (measured on the 256 px fixture
# model: bf16 38.5 dB, fp16 54.6 dB; a random small model here is held to a looser bar).
MIN_PSNR = {torch.bfloat16: 30.0, torch.float16: 40.0}


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="whole-model bf16/fp16 runs take minutes on CPUs without native bf16 (ops are covered "
                           "above; `benchmarks/bench_generator.py --dtypes bfloat16` measures the CPU PSNR)")
@pytest.mark.parametrize("device", ["cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dualstylegan_reduced_precision_psnr(device, dtype):
    from pastiche_core.models import DualStyleGAN, layer_weights

    torch.manual_seed(3)
    g = DualStyleGAN(32, style_dim=64, n_mlp=8, channel_multiplier=1).eval()
    ins, ex = torch.randn(2, 8, 64), torch.randn(2, 8, 64)
    w = layer_weights(0.75, 1.0, 8, n_structure=7)
    with torch.no_grad():
        ref = g(ins, ex, exstyle_space="z", interp_weights=w).clamp(-1, 1)
        low = g.to(device, dtype)(ins.to(device, dtype), ex.to(device, dtype), exstyle_space="z", interp_weights=w)
    assert low.dtype == dtype
    mse = ((low.float().cpu().clamp(-1, 1) - ref) ** 2).mean().item()
    psnr = 10 * np.log10(4.0 / max(mse, 1e-12))
    assert psnr >= MIN_PSNR[dtype], psnr
