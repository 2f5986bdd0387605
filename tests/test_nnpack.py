"""NNPACK's Winograd 3x3 convolution (models/nnpack.py) against the direct convolution, the layout
changes around it, and where it is used."""
import pytest
import torch
import torch.nn.functional as F

from pastiche_core.models import nnpack
from pastiche_core.models.nnpack import conv3x3_nnpack, nnpack_ready, nnpack_wins, to_channels_last, to_nchw

needs_nnpack = pytest.mark.skipif(not nnpack_ready(), reason="this torch has no NNPACK for this CPU")

# F(6x6, 3x3) on inputs and weights of unit scale (outputs ~1): measured up to 7e-5.
TOL = 1.5e-4


@pytest.mark.parametrize("c, h, w", [(1, 5, 7), (3, 16, 9), (64, 34, 40)])
def test_layout_changes_round_trip(c, h, w):
    x = torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last)
    nchw = to_nchw(x)
    assert nchw.is_contiguous() and torch.equal(nchw, x)
    back = to_channels_last(nchw)
    assert back.is_contiguous(memory_format=torch.channels_last) and torch.equal(back, x)


@needs_nnpack
@pytest.mark.parametrize("channels", [64, 128, 256])
@pytest.mark.parametrize("h, w, padding", [(34, 40, (0, 1)), (13, 29, (1, 1)), (6, 6, (1, 1))])
def test_matches_the_direct_convolution(single_thread, channels, h, w, padding):
    gen = torch.Generator().manual_seed(channels + h)
    x = torch.randn(1, channels, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels // 2, channels, 3, 3, generator=gen) / (9 * channels) ** 0.5
    bias = torch.randn(channels // 2, generator=gen)
    with torch.inference_mode():
        got = conv3x3_nnpack(x, weight, bias, padding)
        expected = F.conv2d(x, weight, bias, padding=padding)
        no_bias = conv3x3_nnpack(x, weight, None, padding)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(no_bias, expected - bias.view(1, -1, 1, 1), atol=TOL, rtol=0)


def test_bad_inputs_are_refused():
    with pytest.raises(AssertionError, match="one float32 sample"):
        conv3x3_nnpack(torch.zeros(2, 64, 8, 8), torch.zeros(64, 64, 3, 3))
    with pytest.raises(AssertionError, match="one float32 sample"):
        conv3x3_nnpack(torch.zeros(1, 64, 8, 8, dtype=torch.float64), torch.zeros(64, 64, 3, 3))
    with pytest.raises(AssertionError, match="weight must be"):
        conv3x3_nnpack(torch.zeros(1, 64, 8, 8), torch.zeros(64, 32, 3, 3))


def test_where_nnpack_wins(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setattr(nnpack, "nnpack_ready", lambda: True)
    with torch.inference_mode():
        assert nnpack_wins(x, 128, 128) and nnpack_wins(x, 512, 256)
        assert not nnpack_wins(x, 64, 64) and not nnpack_wins(x, 128, 64)         # below MIN_CHANNELS
        assert not nnpack_wins(x.double(), 128, 128) and not nnpack_wins(x.half(), 128, 128)  # float32 only
        assert not nnpack_wins(torch.zeros(1, device="meta"), 128, 128)            # CPU only
    assert not nnpack_wins(x, 128, 128)                                            # autograd on
    monkeypatch.setattr(nnpack, "nnpack_ready", lambda: False)
    with torch.inference_mode():
        assert not nnpack_wins(x, 128, 128)


def test_the_pool_is_made_only_from_one_thread(two_threads):
    with pytest.raises(AssertionError, match="one intra-op thread"):
        nnpack.make_pool_single_threaded()


def test_a_failing_nnpack_call_falls_back_to_the_direct_convolution(monkeypatch, single_thread):
    """NNPACK reports only a status; a failure warns once and the process keeps to oneDNN."""
    def failing(*args):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(nnpack, "_initialised", lambda: True)
    monkeypatch.setattr(nnpack, "_failed", [])
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", failing)
    x = torch.randn(1, 128, 10, 12).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(128, 128, 3, 3) / 34, torch.randn(128)
    with torch.inference_mode():
        assert nnpack_wins(x, 128, 128)
        with pytest.warns(RuntimeWarning, match="NNPACK failed"):
            got = conv3x3_nnpack(x, weight, bias, (0, 1))
        torch.testing.assert_close(got, F.conv2d(x, weight, bias, padding=(0, 1)), atol=0, rtol=0)
        assert not nnpack_wins(x, 128, 128) and not nnpack_ready()
