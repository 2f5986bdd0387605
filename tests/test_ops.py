"""Fast ops against the plain reference ops, on each dtype and device, tolerances per dtype."""
import numpy as np
import pytest
import torch

import torch.nn.functional as F

from pastiche_core.models.ops import blur_fast, interleave_phases, make_fir_kernel, upconv_phase, \
    upconv_phase_kernels, upfirdn2d_reference, upsample2x_fast
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
@pytest.mark.parametrize("upsample,k,demod,impl", [(False, 3, True, None), (True, 3, True, "transposed"),
                                                   (True, 3, True, "phase"), (False, 1, False, None)])
def test_modulated_conv_fast_equals_reference(device, dtype, batch, upsample, k, demod, impl):
    torch.manual_seed(0)
    conv = ModulatedConv2d(16, 8, k, 32, demodulate=demod, upsample=upsample).to(device, torch.float64)
    conv.upsample_impl = impl or conv.upsample_impl
    x = torch.randn(batch, 16, 8, 8, dtype=torch.float64, device=device)
    style = torch.randn(batch, 32, dtype=torch.float64, device=device)
    expected = conv.forward_reference(x, style)
    conv = conv.to(dtype)
    got = conv(x.to(dtype), style.to(dtype)).double()
    assert got.shape == (batch, 8, 16 if upsample else 8, 16 if upsample else 8)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= TOL[dtype] * max(scale, 1) * 4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("demod,gain", [(True, 1.0), (True, 2 ** 0.5), (False, 1.0), (False, 2 ** 0.5)])
def test_modulated_weight_fast_equals_the_literal_form(dtype, batch, demod, gain):
    torch.manual_seed(0)
    conv = ModulatedConv2d(24, 16, 3, 32, demodulate=demod).double()
    style = torch.randn(batch, 32, dtype=torch.float64)
    expected = conv.modulated_weight(style, gain)
    with torch.inference_mode():
        got = conv.to(dtype).modulated_weight_fast(style.to(dtype), gain).double()
        transposed = conv.modulated_weight_fast(style.to(dtype), gain, transposed=True)
    assert got.shape == expected.shape == (batch, 16, 24, 3, 3)
    assert (got - expected).abs().max().item() <= TOL[dtype] * max(expected.abs().max().item(), 1) * 4
    # laid out [B, in, out, k, k] for a transposed convolution, each sample contiguous
    assert transposed.shape == (batch, 24, 16, 3, 3) and transposed[0].is_contiguous()
    torch.testing.assert_close(transposed.double(), got.transpose(1, 2), atol=0, rtol=0)


def test_square_sums_follow_the_weight_and_carry_its_gradient():
    """The cached sum of squares is rebuilt when the weight changes, and is never used where the
    weight needs a gradient (training through the fast path gets the literal gradient)."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 4, 3, 16).double()
    style = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        before = conv.modulated_weight_fast(style).clone()
        conv.weight[:, :, 0].mul_(3.0)  # an in-place update (an optimiser step, load_state_dict)
        after = conv.modulated_weight_fast(style)
        assert torch.allclose(after, conv.modulated_weight(style), atol=1e-12)
        assert not torch.allclose(after, before)
    with torch.inference_mode():
        assert torch.allclose(conv.modulated_weight_fast(style), conv.modulated_weight(style), atol=1e-12)
    fast = torch.autograd.grad(conv.modulated_weight_fast(style).square().sum(), conv.weight)[0]
    literal = torch.autograd.grad(conv.modulated_weight(style).square().sum(), conv.weight)[0]
    assert torch.allclose(fast, literal, atol=1e-12) and fast.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("upsample", [False, True])
def test_one_sample_takes_the_shared_weight_form_only_on_coarse_layers(dtype, upsample):
    """Batch 1: a 64-channel 4 px layer scales its maps (cheaper than a modulated weight), a
    4-channel 16 px one builds the weight; both equal the official computation."""
    torch.manual_seed(0)
    for channels, side, shared in [(64, 4, True), (4, 16, False)]:
        conv = ModulatedConv2d(channels, channels, 3, 32, upsample=upsample).double()
        x = torch.randn(1, channels, side, side, dtype=torch.float64)
        style = torch.randn(1, 32, dtype=torch.float64)
        expected = conv.forward_reference(x, style)
        conv = conv.to(dtype)
        assert conv.use_batched(x.to(dtype)) is shared
        got = conv(x.to(dtype), style.to(dtype)).double()
        assert (got - expected).abs().max().item() <= TOL[dtype] * max(expected.abs().max().item(), 1) * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl", ["transposed", "phase"])
@pytest.mark.parametrize("batch", [1, 2])
def test_styled_conv_fast_folds_gain_bias_and_noise(device, dtype, impl, batch):
    torch.manual_seed(1)
    layer = StyledConv(8, 8, 3, 16, upsample=True).to(device, torch.float64)
    layer.conv.upsample_impl = impl
    with torch.no_grad():
        layer.noise.weight.fill_(0.3)
        layer.activate.bias.normal_()
    x = torch.randn(batch, 8, 4, 4, dtype=torch.float64, device=device)
    s = torch.randn(batch, 16, dtype=torch.float64, device=device)
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
        phase = g.use_fast_path(True, channels_last=True, upsample="phase")(z)
        g.use_fast_path(True, channels_last=False, upsample="transposed")
    assert fast.shape == (2, 3, 32, 32)
    assert (fast - ref).abs().max().item() < 1e-4
    assert (cl - fast).abs().max().item() < 1e-4
    assert (phase - ref).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="upsample must be one of transposed, phase"):
        g.use_fast_path(True, upsample="winograd")


def official_upconv(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The official up-sampling convolution of one sample: stride-2 transposed conv, then the
    literal upfirdn2d blur with padding (1, 1)."""
    return upfirdn2d_reference(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), kernel, pad=(1, 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("hw", [(4, 4), (5, 7), (8, 6)])
@pytest.mark.parametrize("demod", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upconv_phase_equals_transposed_conv_and_blur(dtype, batch, hw, demod, channels_last):
    """The phase-decomposed up-sampling conv is the official transposed conv + blur, for the
    per-sample modulated (and demodulated) weights the generator builds, odd and even sizes."""
    torch.manual_seed(4)
    conv = ModulatedConv2d(6, 5, 3, 16, demodulate=demod, upsample=True).double()
    x = torch.randn(batch, 6, *hw, dtype=torch.float64)
    weights = conv.modulated_weight(torch.randn(batch, 16, dtype=torch.float64))     # [B, 5, 6, 3, 3]
    kernel = conv.blur.kernel.double()
    expected = torch.cat([official_upconv(x[b: b + 1], weights[b], kernel) for b in range(batch)])
    xd = x.to(dtype)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    got = torch.cat([upconv_phase(xd[b: b + 1], upconv_phase_kernels(weights[b].to(dtype)), kernel.to(dtype))
                     for b in range(batch)])
    assert got.shape == expected.shape == (batch, 5, 2 * hw[0], 2 * hw[1])
    assert (got.double() - expected).abs().max().item() <= TOL[dtype] * max(expected.abs().max().item(), 1)
    # shared weight + per-sample output scale and bias (the batched fast path's form)
    scale = torch.rand(batch, 5, dtype=torch.float64) + 0.5
    bias = torch.randn(5, dtype=torch.float64)
    expected = torch.cat([official_upconv(x[b: b + 1], weights[0], kernel) for b in range(batch)])
    expected = expected * scale[:, :, None, None] + bias[:, None, None]
    got = upconv_phase(xd, upconv_phase_kernels(weights[0].to(dtype)), kernel.to(dtype), bias.to(dtype),
                       out_scale=scale.to(dtype))
    assert (got.double() - expected).abs().max().item() <= TOL[dtype] * max(expected.abs().max().item(), 1)


def test_interleave_phases_is_a_phase_major_pixel_shuffle():
    y = torch.arange(2 * 12 * 3 * 5, dtype=torch.float32).reshape(2, 12, 3, 5)
    out = interleave_phases(y)
    assert out.shape == (2, 3, 6, 10)
    for ry in (0, 1):
        for rx in (0, 1):
            assert torch.equal(out[:, :, ry::2, rx::2], y[:, (ry * 2 + rx) * 3:(ry * 2 + rx + 1) * 3])
    assert torch.equal(interleave_phases(y.contiguous(memory_format=torch.channels_last)), out)


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


@pytest.mark.parametrize("kind", ["generator", "dualstylegan"])
def test_batch_runs_large_blocks_per_sample_with_the_same_result(kind):
    """A fast-path batch switches to one sample at a time from PER_SAMPLE_FROM on: the images
    equal the reference path's and those of each sample generated alone (per-sample noise,
    per-sample layer weights and a shared extrinsic code included)."""
    from pastiche_core.models import DualStyleGAN, layer_weights

    torch.manual_seed(5)
    if kind == "generator":
        model = Generator(32, style_dim=64, n_mlp=2).eval()
        g = model
    else:
        model = DualStyleGAN(32, style_dim=64, n_mlp=8, channel_multiplier=1).eval()
        g = model.generator
    g.PER_SAMPLE_FROM = 16  # blocks 16 and 32 px per sample
    assert g.per_sample_from(3) == 1 and g.per_sample_from(1) == len(g.to_rgbs)
    assert g.per_sample_from(3, "cuda") == len(g.to_rgbs)  # GPUs keep the whole batch together
    ins = torch.randn(3, 8, 64)
    noise = [torch.randn(3, *shape[1:]) for shape in g.noise_shapes(1)]
    kw = {"noise": noise}
    if kind == "dualstylegan":
        weights = torch.tensor([layer_weights(s, c, 8, n_structure=7) for s, c in [(0.75, 1), (0.2, 0.5), (1, 0)]])
        kw.update(exstyle=torch.randn(1, 8, 64), exstyle_space="z", interp_weights=weights)
    with torch.no_grad():
        fast = model(ins, **kw)
        alone = torch.cat([model(ins[b: b + 1], **{**kw, "noise": [n[b: b + 1] for n in noise],
                                                 **({"interp_weights": kw["interp_weights"][b: b + 1]}
                                                    if kind == "dualstylegan" else {})})
                           for b in range(3)])
        model.use_fast_path(False)
        assert g.per_sample_from(3) == len(g.to_rgbs)
        ref = model(ins, **kw)
        model.use_fast_path(True)
    assert fast.shape == (3, 3, 32, 32)
    assert (fast - ref).abs().max().item() < 1e-4
    assert (fast - alone).abs().max().item() < 1e-4
