"""Banded synthesis (models/bands.py): the halo rows each band reads, the streaming of rows
between chained blocks, and bands against whole blocks, per dtype."""
import threading

import pytest
import torch

from pastiche_core.models import DEFAULT_INTERP_WEIGHTS, bands, nnpack, workers
from pastiche_core.models.bands import BandedBlock, StreamedRows, band_rows, blocks_in_bands, chain_bands, input_rows, \
    skip_rows
from pastiche_core.reference import fixture_model

# Atol on outputs of unit scale; the bands run the fast path's arithmetic on row slices, so
# only the summation order inside the library's kernels differs (tests that compare the band
# logic take NNPACK out: `same_arithmetic`).
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
DTYPES = list(TOL)
# On band workers the float32 3x3 convolutions from 128 channels run by NNPACK's Winograd F(6x6, 3x3)
# (models/nnpack.py), up to 7e-5 from the direct convolution on maps of unit scale.
NNPACK_TOL = 1.5e-4


@pytest.fixture
def same_arithmetic(monkeypatch):
    """The bands' 3x3 convolutions as the whole blocks run them (no NNPACK)."""
    monkeypatch.setattr(bands, "nnpack_wins", lambda *args: False)


@pytest.fixture(scope="module")
def gen512():
    return fixture_model("stylegan2", 512).use_fast_path(True, channels_last=True)


def block_inputs(g, j: int, dtype: torch.dtype, seed: int = 0):
    """Random input, skip and styles for block ``j`` of ``g``, and its stored noises."""
    gen = torch.Generator().manual_seed(seed)
    h = 2 ** (j + 2)
    x = torch.randn(1, g.convs[2 * j].conv.in_channels, h, h, generator=gen, dtype=torch.float64)
    skip = torch.randn(1, 3, h, h, generator=gen, dtype=torch.float64)
    styles = [torch.randn(1, 512, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3)]
    noises = [getattr(g.noises, f"noise_{2 * j + k}").to(dtype) for k in (1, 2)]
    return x.to(dtype).contiguous(memory_format=torch.channels_last), skip.to(dtype), styles, noises


def whole_block(g, j, x, skip, styles, noises):
    out = g.convs[2 * j + 1](g.convs[2 * j](x, styles[0], noises[0]), styles[1], noises[1])
    return out, g.to_rgbs[j](out, styles[2], skip)


def layers(g, j, styles, noises):
    return g.convs[2 * j], g.convs[2 * j + 1], g.to_rgbs[j], styles, noises


@pytest.mark.parametrize("side", [8, 16, 34])
def test_halo_rows_are_exactly_the_rows_read(side):
    """Poison the input rows outside ``input_rows``' range with NaN: the block's output rows
    [a, b) stay finite (nothing else is read), and poisoning the first or last row inside the
    range reaches them (the range is no wider than needed). The same for the skip's up-sampling."""
    torch.manual_seed(0)
    g = fixture_model("stylegan2", 16).use_fast_path(False)  # the literal ops: NaN spreads as the maths says
    conv_up, to_rgb = g.convs[2], g.to_rgbs[1]
    h = side // 2
    style = torch.randn(1, 512)
    noise = torch.randn(1, 1, side, side)
    for a in range(0, side, 3):
        for b in range(a + 1, min(side, a + 7) + 1):
            c, d, m0, m1 = input_rows(a, b, side)
            r0, r1 = skip_rows(a, b, side)

            def up_rows(poison: list[int]) -> torch.Tensor:
                x = torch.randn(1, conv_up.conv.in_channels, h, side // 2)
                x[:, :, poison] = float("nan")
                return conv_up(x, style, noise)[:, :, c:d]

            def skip_up(poison: list[int]) -> torch.Tensor:
                s = torch.randn(1, 3, h, h)
                s[:, :, poison] = float("nan")
                return to_rgb.upsample(s)[:, :, a:b]

            outside = [m for m in range(h) if not m0 <= m <= m1]
            assert torch.isfinite(up_rows(outside)).all(), (a, b)
            assert not torch.isfinite(up_rows([m0])).all() and not torch.isfinite(up_rows([m1])).all(), (a, b)
            assert c == max(a - 1, 0) and d == min(b + 1, side)
            outside = [r for r in range(h) if not r0 <= r <= r1]
            assert torch.isfinite(skip_up(outside)).all(), (a, b)
            assert not torch.isfinite(skip_up([r0])).all() and not torch.isfinite(skip_up([r1])).all(), (a, b)


def test_band_rows_follow_the_byte_budget():
    assert band_rows(32, 1024, 4) == 32            # 128 kB a row, 4 MB a band
    assert band_rows(32, 1024, 8) == 16
    assert band_rows(512, 1024, 4) == 8            # never fewer than 8 rows
    assert band_rows(3, 17, 4, band_bytes=1000) % 2 == 0


def test_streamed_rows_serve_increasing_requests_and_forget_old_bands():
    full_feat = torch.arange(40.0).view(1, 1, 40, 1).expand(1, 2, 40, 3).contiguous()
    full_rgb = -full_feat[:, :1]
    made = []

    def bands():
        for a in range(0, 40, 6):
            b = min(a + 6, 40)
            made.append((a, b))
            yield a, b, full_feat[:, :, a:b], full_rgb[:, :, a:b]

    rows = StreamedRows(bands())
    for lo, hi in [(0, 3), (1, 9), (5, 17), (12, 13), (13, 40)]:
        torch.testing.assert_close(rows.get(lo, hi, 0), full_feat[:, :, lo:hi])
        torch.testing.assert_close(rows.get(max(lo - 1, 0), hi, 1), full_rgb[:, :, max(lo - 1, 0):hi])
        assert all(b > max(lo - 1, 0) for _, b, *_ in rows.chunks)  # nothing kept from behind both
        assert made[-1][1] >= hi and len(made) == -(-hi // 6)       # nothing made ahead of need
    with pytest.raises(AssertionError, match="increasing order"):
        rows.get(0, 2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [8, 18, 200])
def test_one_block_in_bands_equals_the_whole_block(gen512, dtype, rows, same_arithmetic):
    """Band heights that divide the side, that leave a short last band, and one band."""
    g = gen512.to(dtype)
    j = 5  # 128 -> 256 px, 256 -> 128 channels
    x, skip, styles, noises = block_inputs(g, j, dtype)
    with torch.inference_mode():
        feat, rgb = whole_block(g, j, x, skip, styles, noises)
        bfeat, brgb = blocks_in_bands([layers(g, j, styles, noises)], x, skip, keep_features=True, rows=rows)
        _, brgb_only = blocks_in_bands([layers(g, j, styles, noises)], x, skip, rows=rows)
    assert bfeat.shape == feat.shape and brgb.shape == rgb.shape and brgb.dtype == dtype
    assert bfeat.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(bfeat, feat, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(brgb, rgb, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(brgb_only, brgb, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chained_blocks_equal_whole_blocks(gen512, dtype, same_arithmetic):
    """256 then 512 px: the second block reads the first one's rows as they are made."""
    g = gen512.to(dtype)
    x, skip, styles5, noises5 = block_inputs(g, 5, dtype, seed=1)
    _, _, styles6, noises6 = block_inputs(g, 6, dtype, seed=2)
    with torch.inference_mode():
        out, rgb = whole_block(g, 5, x, skip, styles5, noises5)
        _, rgb = whole_block(g, 6, out, rgb, styles6, noises6)
        feat, banded = blocks_in_bands([layers(g, 5, styles5, noises5), layers(g, 6, styles6, noises6)], x, skip, rows=10)
    assert feat is None and banded.shape == (1, 3, 512, 512)
    torch.testing.assert_close(banded, rgb, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("start, stop", [(0, 512), (0, 130), (130, 260), (300, 512), (510, 512)])
def test_a_chain_segment_makes_only_the_rows_read(gen512, monkeypatch, start, stop):
    """A segment of a chain (rows [start, stop) of the last block): every earlier block makes
    exactly the rows the next one asks for, no band beyond them (a segment recomputes only the
    halo of its neighbours), and the segment's rows equal the whole chain's."""
    g = gen512
    x, skip, styles5, noises5 = block_inputs(g, 5, torch.float32, seed=1)
    _, _, styles6, noises6 = block_inputs(g, 6, torch.float32, seed=2)
    made: dict[int, list] = {256: [], 512: []}
    asked: list[tuple[int, int]] = []
    band, get = BandedBlock.band, StreamedRows.get

    def recording_band(self, a, b, source, skip_source=None):
        made[self.side].append((a, b))
        return band(self, a, b, source, skip_source)

    def recording_get(self, lo, hi, part=0):
        asked.append((lo, hi))
        return get(self, lo, hi, part)

    with torch.inference_mode():
        blocks = [BandedBlock(*layers(g, 5, styles5, noises5), 128, x, rows=24),
                  BandedBlock(*layers(g, 6, styles6, noises6), 256, x, rows=10)]
        whole = torch.cat([rgb for *_, rgb in chain_bands(blocks, x, skip)], 2)
        monkeypatch.setattr(BandedBlock, "band", recording_band)
        monkeypatch.setattr(StreamedRows, "get", recording_get)
        part = torch.cat([rgb for *_, rgb in chain_bands(blocks, x, skip, start, stop)], 2)
    assert made[512][0][0] == start and made[512][-1][1] == stop
    first, last = min(lo for lo, _ in asked), max(hi for _, hi in asked)
    assert made[256][0][0] == first and made[256][-1][1] == last, (made[256], first, last)
    assert all(b0[1] == b1[0] for b0, b1 in zip(made[256], made[256][1:]))  # each row once
    torch.testing.assert_close(part, whole[:, :, start:stop], atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["stylegan2", "dualstylegan"])
def test_models_in_bands_equal_whole_blocks(kind):
    """The whole model at 512 px, a batch of two (sample by sample from 128 px) and per-sample
    layer weights, with and without bands."""
    model = fixture_model(kind, 512)
    torch.manual_seed(3)
    codes = torch.randn(2, model.n_latent, 512)
    if kind == "dualstylegan":
        weights = torch.tensor([DEFAULT_INTERP_WEIGHTS[: model.n_latent], [0.5] * model.n_latent])

        def run():
            return model(codes, torch.randn(1, model.n_latent, 512, generator=torch.Generator().manual_seed(4)),
                         truncation=0.7, truncation_latent=0, interp_weights=weights)
    else:
        def run():
            return model(codes, truncation=0.7, truncation_latent=0)
    with torch.inference_mode():
        model.use_fast_path(True, channels_last=True, bands=False)
        whole = run()
        model.use_fast_path(True, channels_last=True, bands=True)
        banded = run()
        model.use_fast_path(False)
        reference = run()
    assert banded.shape == (2, 3, 512, 512)
    torch.testing.assert_close(banded, whole, atol=NNPACK_TOL if nnpack.nnpack_ready() else 2e-5, rtol=0)
    torch.testing.assert_close(banded, reference, atol=2e-4, rtol=0)  # the fixture tolerance


@pytest.mark.skipif(not nnpack.nnpack_ready(), reason="this torch has no NNPACK for this CPU")
def test_band_workers_run_the_wide_3x3_convolutions_by_nnpack(gen512, two_threads, monkeypatch):
    """On band workers (one thread each) the 128-channel convolutions of the 256 px block run by
    NNPACK (not the 64-channel ones at 512 px), within its tolerance of the whole blocks; on a
    caller running two threads they do not (NNPACK's pool is one thread: models/nnpack.py)."""
    g = gen512
    x, skip, styles5, noises5 = block_inputs(g, 5, torch.float32, seed=1)
    _, _, styles6, noises6 = block_inputs(g, 6, torch.float32, seed=2)
    chain = [layers(g, 5, styles5, noises5), layers(g, 6, styles6, noises6)]
    calls = []

    def spy(u, weight, bias=None, padding=(1, 1)):
        calls.append((weight.shape[0], torch.get_num_threads()))
        return nnpack.conv3x3_nnpack(u, weight, bias, padding)

    monkeypatch.setattr(bands, "conv3x3_nnpack", spy)
    with torch.inference_mode():
        out, rgb = whole_block(g, 5, x, skip, styles5, noises5)
        feat, rgb = whole_block(g, 6, out, rgb, styles6, noises6)
        bfeat, brgb = blocks_in_bands(chain, x, skip, keep_features=True)
        assert {c for c, _ in calls} == {128} and {t for _, t in calls} == {1}
        calls.clear()
        monkeypatch.setattr(workers, "MAX_WORKERS", 0)  # the bands in order, on this thread's two
        blocks_in_bands(chain, x, skip)
        assert calls == []
    torch.testing.assert_close(bfeat, feat, atol=NNPACK_TOL, rtol=0)
    torch.testing.assert_close(brgb, rgb, atol=NNPACK_TOL, rtol=0)


def test_bands_step_aside_where_a_gradient_is_needed(gen512, monkeypatch):
    """Training and the refinement stages differentiate through the generator: those calls run
    whole blocks (the bands write into preallocated outputs), with the same result."""
    g = gen512
    x, skip, styles, noises = block_inputs(g, 5, torch.float32)
    with torch.inference_mode():
        assert g.use_bands(x, 5, styles)
    assert g.use_bands(x, 5, styles)  # grad mode, but nothing requires a gradient
    styles = [s.clone().requires_grad_() for s in styles]
    assert not g.use_bands(x, 5, styles)
    detached = [s.detach() for s in styles]
    monkeypatch.setattr(workers, "MAX_WORKERS", 0)
    assert not g.use_bands(x, 4, detached)  # 128 px: below BANDS_FROM
    monkeypatch.setattr(workers, "MAX_WORKERS", 4)
    assert g.use_bands(x, 4, detached) == (torch.get_num_threads() in (2, 3, 4))  # from WORKER_BANDS_FROM
    latent = torch.randn(1, g.n_latent, 512, requires_grad=True)
    image = g.synthesis(latent)
    image.square().mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    with torch.inference_mode():
        torch.testing.assert_close(g.synthesis(latent.detach()), image.detach(), atol=2e-5, rtol=0)


def test_pieces_run_on_single_threaded_workers_in_the_callers_mode(two_threads):
    seen, lock = [], threading.Lock()

    def piece(i):
        with lock:
            seen.append((i, threading.current_thread().name, torch.is_inference_mode_enabled(), torch.get_num_threads()))

    assert workers.worker_count() == 2 and workers.worker_count("meta") == 0
    with torch.inference_mode():
        workers.run_pieces(piece, [(i,) for i in range(6)])
    assert sorted(i for i, *_ in seen) == list(range(6))
    assert all(name.startswith("pastiche-band") and inference and n == 1 for _, name, inference, n in seen), seen
    assert torch.get_num_threads() == 2
    counts = []  # a thread started afterwards gets the caller's count, not the workers' one
    t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert counts == [2]


def test_piece_errors_reach_the_caller_and_pieces_do_not_nest(two_threads):
    names = []

    def piece(i):
        if i == 3:
            raise ValueError("piece 3 failed")
        inner = []
        workers.run_pieces(lambda k: inner.append(threading.current_thread().name), [(0,), (1,), (2,)])
        names.append(set(inner))

    with pytest.raises(ValueError, match="piece 3 failed"):
        workers.run_pieces(piece, [(i,) for i in range(5)])
    assert len(names) == 4 and all(len(n) == 1 for n in names)  # nested pieces ran in order, on their worker


def test_bands_on_workers_equal_bands_in_order(gen512, two_threads, monkeypatch, same_arithmetic):
    g = gen512
    latent = torch.randn(1, g.n_latent, 512, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        on_workers = g.synthesis(latent)
        monkeypatch.setattr(workers, "MAX_WORKERS", 0)
        in_order = g.synthesis(latent)
    torch.testing.assert_close(on_workers, in_order, atol=2e-5, rtol=0)
