"""Winograd F(4x4, 3x3) convolution against the direct convolution, per dtype, and its use in the
modulated convolutions of the fast path."""
import pytest
import torch
import torch.nn.functional as F

from pastiche_core.models import DualStyleGAN, winograd
from pastiche_core.models.ops import EqualConv2d
from pastiche_core.models.stylegan2 import Generator, ModulatedConv2d, StyledConv
from pastiche_core.models.winograd import conv3x3_winograd, transform_weight

# Atol for outputs of about unit scale (inputs N(0, 1), weights N(0, 1 / fan_in)). Winograd's
# transforms (entries up to 25 and 1/24) cost float32 a few more ulps than the direct conv.
TOL = {torch.float64: 1e-11, torch.float32: 1e-4}
DTYPES = list(TOL)


def sample(c_in: int, c_out: int, h: int, w: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / (9 * c_in) ** 0.5
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,w", [(4, 4), (16, 16), (5, 7), (13, 20), (1, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_direct_convolution(dtype, h, w, channels_last):
    x, weight, bias = sample(24, 40, h, w, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = conv3x3_winograd(x, weight, bias)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    assert out.shape == (1, 40, h, w) and out.dtype == dtype
    torch.testing.assert_close(out.double(), exact, atol=TOL[dtype], rtol=0)
    # The strides F.conv2d gives (libraries pick kernels by strides, of size-1 dims too).
    assert out.stride() == F.conv2d(x, weight, bias, padding=1).stride()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strip_tiles", [1, 5, 12, 1 << 30])
def test_strips_of_tile_rows_give_the_same_result(dtype, strip_tiles):
    """Strips of 1, 2 (5 tiles of a 3-tile row round up), 4 and all tile rows, with a short last
    strip (10 tile rows)."""
    x, weight, bias = sample(8, 12, 37, 11, dtype, seed=1)
    out = conv3x3_winograd(x, weight, bias, min_strip_tiles=strip_tiles)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    torch.testing.assert_close(out.double(), exact, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scales_and_pretransformed_weight(dtype):
    """``conv(x * in_scale, W) * out_scale + bias`` with ``transform_weight(W)`` given."""
    x, weight, bias = sample(16, 8, 9, 12, dtype, seed=2)
    g = torch.Generator().manual_seed(3)
    s_in = torch.rand(16, generator=g, dtype=torch.float64).to(dtype) + 0.5
    s_out = torch.rand(8, generator=g, dtype=torch.float64).to(dtype) + 0.5
    out = conv3x3_winograd(x, None, bias, transformed=transform_weight(weight), in_scale=s_in, out_scale=s_out)
    exact = F.conv2d(x.double() * s_in.double()[:, None, None], weight.double(), padding=1) \
        * s_out.double()[:, None, None] + bias.double()[:, None, None]
    torch.testing.assert_close(out.double(), exact, atol=TOL[dtype], rtol=0)


def test_transform_weight_layout():
    """``G w G^T`` at ``[position, in, out]``: one (out, in) pair's transform by the definition."""
    _, weight, _ = sample(3, 5, 4, 4, torch.float64)
    g = torch.tensor(winograd._G, dtype=torch.float64)
    u = transform_weight(weight)
    assert u.shape == (36, 3, 5)
    torch.testing.assert_close(u[:, 1, 4].view(6, 6), g @ weight[4, 1] @ g.T, atol=1e-14, rtol=0)


def test_gradients_match_direct_convolution():
    x, weight, bias = sample(6, 4, 7, 10, torch.float64, seed=4)
    x = torch.cat([x, x.flip(-2)])
    grads = []
    for conv in (conv3x3_winograd, lambda a, b, c: F.conv2d(a, b, c, padding=1)):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        conv(*leaves).pow(2).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strip_tiles", [1, 7, 1 << 30])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_batch_goes_through_one_matmul_with_per_sample_scales(dtype, strip_tiles, channels_last):
    """Three samples, each with its own input and output scales (a modulated layer's styles), in
    strips of one tile row, of tile rows of several samples, and whole: each sample equals its
    own direct convolution, and the output keeps the input's memory format."""
    x, weight, bias = sample(16, 12, 10, 9, dtype, seed=7)
    x = torch.cat([x, -x, 2 * x.flip(-1)])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(8)
    s_in = torch.rand(3, 16, generator=g, dtype=torch.float64).to(dtype) + 0.5
    s_out = torch.rand(3, 12, generator=g, dtype=torch.float64).to(dtype) + 0.5
    out = conv3x3_winograd(x, None, bias, transformed=transform_weight(weight), in_scale=s_in, out_scale=s_out,
                           min_strip_tiles=strip_tiles)
    assert out.shape == (3, 12, 10, 9) and out.stride() == F.conv2d(x, weight, bias, padding=1).stride()
    for b in range(3):
        exact = F.conv2d(x[b:b + 1].double() * s_in[b].double()[:, None, None], weight.double(), padding=1) \
            * s_out[b].double()[:, None, None] + bias.double()[:, None, None]
        torch.testing.assert_close(out[b:b + 1].double(), exact, atol=TOL[dtype], rtol=0)
    shared = conv3x3_winograd(x, weight, bias, in_scale=s_in[0], out_scale=s_out[0])  # [C]: the same for all
    torch.testing.assert_close(shared.double(), (F.conv2d(x.double() * s_in[0].double()[:, None, None], weight.double(),
                                                          padding=1) * s_out[0].double()[:, None, None]
                                                 + bias.double()[:, None, None]), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("bad", ["kernel", "channels", "in_scale", "out_scale"])
def test_bad_shapes_are_refused(bad):
    x, weight, _ = sample(4, 4, 8, 8, torch.float32)
    x = x.expand(2, -1, -1, -1)
    scales = {}
    if bad == "kernel":
        weight = weight[:, :, :2, :2]
    elif bad == "channels":
        weight = weight[:, :3]
    else:
        scales[bad] = torch.ones(3, 4)  # three rows for two samples
    with pytest.raises(AssertionError, match=f"{bad} must be" if "scale" in bad else "weight must be"):
        conv3x3_winograd(x, weight, **scales)


# -- in the modulated convolutions ------------------------------------------------------------
def modulated_layers(dtype, seed: int = 0):
    torch.manual_seed(seed)
    conv = ModulatedConv2d(256, 32, 3, 64).to(dtype)
    styled = StyledConv(256, 32, 3, 64).to(dtype)
    with torch.no_grad():
        styled.activate.bias.normal_()
        styled.noise.weight.fill_(0.3)
    return conv, styled


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2])
def test_modulated_conv_winograd_matches_reference(dtype, batch):
    conv, styled = modulated_layers(dtype)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, 256, 16, 20, generator=g, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    style = torch.randn(batch, 64, generator=g, dtype=torch.float64).to(dtype)
    noise = torch.randn(batch, 1, 16, 20, generator=g, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        assert conv.route(x) == styled.conv.route(x) == "winograd"  # batches too: one batched matmul
        outs = {}
        for on in (True, False):
            conv.winograd = styled.conv.winograd = on
            outs[on] = (conv(x, style), styled(x, style, noise))
        conv.fast = styled.fast = styled.conv.fast = False
        reference = (conv(x, style), styled(x, style, noise))
    for got, direct, want in zip(outs[True], outs[False], reference):
        torch.testing.assert_close(got.double(), want.double(), atol=TOL[dtype], rtol=0)
        torch.testing.assert_close(direct.double(), want.double(), atol=TOL[dtype], rtol=0)


def test_cached_transformed_weight_follows_weight_updates():
    conv, _ = modulated_layers(torch.float32)
    x = torch.randn(1, 256, 16, 16)
    style = torch.randn(1, 64)
    with torch.no_grad():
        conv(x, style)
        conv.weight.mul_(-2.0)
        got = conv(x, style)
        conv.winograd = False
        want = conv(x, style)
    torch.testing.assert_close(got, want, atol=TOL[torch.float32], rtol=0)


def test_a_weight_being_trained_takes_the_direct_convolution():
    """Winograd keeps the shared weight's transform; a weight that needs a gradient would be
    transformed on every call (slower than the direct convolution), so training runs direct and
    its gradient is the direct one. Frozen weights (refining codes through a fixed generator)
    keep Winograd, and the gradient to the codes is the direct one."""
    conv, _ = modulated_layers(torch.float64)
    x = torch.randn(1, 256, 16, 16, dtype=torch.float64)
    style = torch.randn(1, 64, dtype=torch.float64)
    assert not conv.use_winograd(x)
    with torch.no_grad():
        assert conv.use_winograd(x)
    conv.requires_grad_(False)
    assert conv.use_winograd(x)
    code = style.clone().requires_grad_(True)
    grads = []
    for on in (True, False):
        conv.winograd = on
        grads.append(torch.autograd.grad(conv(x, code).pow(2).sum(), code)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=0)


@torch.no_grad()
def test_where_winograd_is_used():
    x = torch.randn(1, 256, 16, 16)
    conv = ModulatedConv2d(256, 32, 3, 64)
    assert conv.use_winograd(x)
    assert not conv.use_winograd(x[..., :8, :8])                     # too small a map
    assert not conv.use_winograd(x.bfloat16())                        # low precision: direct
    conv.winograd = False
    assert not conv.use_winograd(x)
    assert not ModulatedConv2d(128, 32, 3, 64).use_winograd(torch.randn(1, 128, 16, 16))
    assert not ModulatedConv2d(256, 32, 3, 64, upsample=True).use_winograd(x)
    assert not ModulatedConv2d(256, 3, 1, 64, demodulate=False).use_winograd(x)


def test_generator_switch():
    gen = Generator(64, style_dim=64, n_mlp=1, channel_multiplier=1)
    convs = [m for m in gen.modules() if isinstance(m, ModulatedConv2d)]
    assert convs and all(m.winograd for m in convs)
    gen.use_fast_path(True, winograd=False)
    assert not any(m.winograd for m in convs)
    gen.use_fast_path(True, winograd=True)
    assert all(m.winograd for m in convs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 2])
def test_equal_conv_winograd_matches_direct(dtype, batch):
    """The ModRes blocks' plain 3x3 convolutions (weight scaled at run time, no bias there; with
    a bias here too)."""
    torch.manual_seed(6)
    conv = EqualConv2d(256, 24, 3, padding=1).to(dtype)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(batch, 256, 16, 17, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.winograd = True
        assert conv.use_winograd(x)
        got = conv(x)
        conv.fast = False
        assert not conv.use_winograd(x)
        want = conv(x)
    torch.testing.assert_close(got.double(), want.double(), atol=TOL[dtype], rtol=0)
    assert got.stride() == want.stride()


def test_dualstylegan_switch_reaches_modres_convs():
    model = DualStyleGAN(64, style_dim=64, n_mlp=7, channel_multiplier=1)
    res_convs = [m for m in model.res.modules() if isinstance(m, EqualConv2d)]
    mod_convs = [m for m in model.modules() if isinstance(m, ModulatedConv2d)]
    assert res_convs and all(m.winograd for m in res_convs + mod_convs)
    assert not any(m.winograd for m in model.modules() if isinstance(m, EqualConv2d) and m not in res_convs)
    model.use_fast_path(True, winograd=False)
    assert not any(m.winograd for m in res_convs + mod_convs)
    model.use_fast_path(True, winograd=True)
    assert all(m.winograd for m in res_convs + mod_convs)


def test_cached_transform_dropped_when_the_module_moves():
    conv, _ = modulated_layers(torch.float32)
    x = torch.randn(1, 256, 16, 16)
    style = torch.randn(1, 64)
    with torch.no_grad():
        conv(x, style)
        assert conv._derived["winograd"] is not None
        conv.double()
        assert conv._derived is None
        got = conv(x.double(), style.double())
        assert conv._derived["winograd"][1].dtype == torch.float64
        conv.winograd = False
        want = conv(x.double(), style.double())
    torch.testing.assert_close(got, want, atol=TOL[torch.float64], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_kept_in_inference_mode_never_reach_a_backward_pass(dtype):
    """A frozen generator used for a preview (inference mode) and then differentiated through
    (the refinement stages optimise codes through it): the transforms and sums kept in inference
    mode are not reused, the gradient is the direct convolution's; weights made in inference
    mode (no version counter) still run."""
    conv, _ = modulated_layers(dtype)
    conv.requires_grad_(False)
    x = torch.randn(1, 256, 16, 16, dtype=dtype)
    style = torch.randn(1, 64, dtype=dtype)
    with torch.inference_mode():
        conv(x, style)
    code = style.clone().requires_grad_(True)
    got = torch.autograd.grad(conv(x, code).square().sum(), code)[0]
    conv.winograd = False
    want = torch.autograd.grad(conv(x, code).square().sum(), code)[0]
    torch.testing.assert_close(got, want, atol=TOL[dtype] * 100, rtol=TOL[dtype] * 100)
    conv.winograd = True
    with torch.inference_mode():
        frozen = modulated_layers(dtype)[0]  # parameters made in inference mode
        assert frozen.weight.is_inference()
        first, again = frozen(x, style), frozen(x, style)
        frozen.winograd = False
        torch.testing.assert_close(first, frozen(x, style), atol=TOL[dtype], rtol=0)
        assert torch.equal(first, again)
