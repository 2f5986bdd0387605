"""Clips: tracked faces, smoothed alignment, frame folders, the --video commands, the node clip mode.

The clips are made at test time by moving a window smoothly over a real photo of the fixtures
(a camera pan) with seeded sensor noise, so the true motion of the face is known exactly.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pastiche_core.errors import InputError
from pastiche_core.faces.track import FaceTracker, MotionFilter, box_iou, quad_from_params, quad_params
from pastiche_core.video import list_frames, mean_crop_change, natural_key, open_clip, synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"
PORTRAIT = FIX / "align" / "dsg_unsplash-rDEOVtE7vOs" / "input.jpg"  # 1536x1024, one face of ~660 px
TWO_FACES = FIX / "edge" / "two_faces.jpg"  # 1024x512, two faces of about the same size
# a pan that keeps the face's whole alignment square inside every frame
PAN = dict(window=(780, 780), center=(785, 440), amplitude=(40, 25))


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def dlib_ok():
    from pastiche_core.faces.detect import available_detectors

    reason = available_detectors().get("dlib")
    if reason:
        pytest.skip(f"dlib detector unavailable: {reason}")


@pytest.fixture(scope="module")
def pan(dlib_ok):
    """16 frames of 256x256 panning over the portrait, aligned frame by frame and tracked."""
    from pastiche_core.faces.align import align_faces

    frames, offsets, scale = synthetic_clip(_rgb(PORTRAIT), 16, out_width=256, noise=3.0, seed=0, **PAN)
    per_frame = [align_faces(f, size=256)[0] for f in frames]
    tracker = FaceTracker("dlib", smoothing=0.5, detect_every=5)
    tracked = [tracker.align(f, size=256) for f in frames]
    return {"frames": frames, "offsets": offsets, "scale": scale, "per_frame": per_frame, "tracked": tracked,
            "tracker": tracker}


# ------------------------------------------------------------------------------------------
# the filter alone (no detector)
# ------------------------------------------------------------------------------------------
def test_motion_filter_off_passes_through_and_bad_strength_is_refused():
    f = MotionFilter(0.0)
    for p in ([10.0, 20.0, 50.0, 1.0], [13.0, 19.0, 52.0, -2.0]):
        assert np.array_equal(f(np.array(p)), p)
    with pytest.raises(InputError, match="smoothing must be in"):
        MotionFilter(1.5)


def test_motion_filter_reduces_jitter_and_follows_motion():
    rng = np.random.default_rng(1)
    n = 80
    t = np.arange(n, dtype=np.float64)
    centre = np.stack([100 + 3.0 * t, 200 - 1.5 * t], axis=1)  # a steady pan, 3 px a frame
    angle = 0.004 * t  # and a slow head tilt, 9 degrees over the clip
    radius = 100.0
    truth = np.c_[centre, radius * np.cos(angle), radius * np.sin(angle)]
    noisy = truth + np.c_[rng.normal(0, 0.3, (n, 2)), rng.normal(0, 1.0, (n, 2))]  # scale/angle jitter dominates
    f = MotionFilter(0.5)
    out = np.array([f(p) for p in noisy])
    err_raw = np.abs(noisy - truth)[30:]
    err = np.abs(out - truth)[30:]
    assert np.sqrt((err[:, 2:] ** 2).mean()) < 0.6 * np.sqrt((err_raw[:, 2:] ** 2).mean())  # much less jitter
    assert err[:, :2].max() < 1.0  # the centre does not trail the pan
    assert err[:, 2:].max() < 1.5  # nor the shape the tilt (1.5 % of the face size at most)
    # a jump (a cut, a quick turn) is followed within a couple of frames, not eased in over many
    g = MotionFilter(1.0)
    for p in truth[:20]:
        g(p)
    jumped = truth[20] + np.array([60.0, 0, 0, 0])
    for _ in range(2):
        last = g(jumped)
    assert abs(last[0] - jumped[0]) < 3.0


def test_quad_params_round_trip_the_official_square():
    from pastiche_core.faces.align import face_quad

    anchors = np.array([[100.0, 120.0], [160.0, 118.0], [110.0, 190.0], [150.0, 192.0]])
    quad, qsize = quad_from_params(quad_params(anchors))
    ref = face_quad(anchors)
    assert np.allclose(quad, ref["quad"]) and qsize == pytest.approx(ref["qsize"])
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------
# tracked alignment on a real photo
# ------------------------------------------------------------------------------------------
def test_smoothed_crops_change_much_less_than_frame_by_frame(pan):
    raw = mean_crop_change([a.image for a in pan["per_frame"]])
    smooth = mean_crop_change([t[0].image for t in pan["tracked"]])
    assert smooth <= 0.6 * raw, (smooth, raw)


def test_a_moving_face_is_followed_not_frozen(pan):
    """The face is still in the photo and the window moves: mapped back into the photo, the
    smoothed square must stay put (it follows the face through the frames)."""
    k, offsets = pan["scale"], pan["offsets"]
    centres = np.array([np.asarray(t[0].quad).mean(axis=0) for t in pan["tracked"]])  # frame pixels
    assert np.ptp(centres[:, 0]) > 15  # the face really moves across the frames
    in_photo = centres / k + offsets
    dev = np.abs(in_photo - np.median(in_photo, axis=0)).max() * k  # in frame pixels
    assert dev < 2.0, dev
    # and the crop's face stays centred: its paste-back transform follows too
    m = pan["tracked"][-1][0].matrix()
    assert np.allclose(m[:2, 2] + m[:2, :2] @ [127.5, 127.5], centres[-1], atol=1.0)


def test_detection_runs_every_n_frames_and_ids_are_stable(pan):
    tr = pan["tracker"]
    assert tr.detections == 4  # frames 0, 5, 10, 15 of 16
    assert {t[0].params["track_id"] for t in pan["tracked"]} == {0}
    assert [t[0].params["tracking"] for t in pan["tracked"][:6]] == ["detect"] + ["track"] * 4 + ["detect"]


def test_two_faces_keep_their_ids(dlib_ok):
    frames, offsets, k = synthetic_clip(_rgb(TWO_FACES), 6, window=(960, 480), center=(512, 256),
                                        amplitude=(30, 10), out_width=480, noise=3.0, seed=2)
    tracker = FaceTracker("dlib", face="all", detect_every=3)
    where: dict[int, list[np.ndarray]] = {}
    for i, f in enumerate(frames):
        faces = tracker.align(f, size=64)
        assert [a.params["track_id"] for a in faces] == [0, 1]
        for a in faces:
            where.setdefault(a.params["track_id"], []).append(np.asarray(a.quad).mean(axis=0) / k + offsets[i])
    spots = {tid: np.array(v) for tid, v in where.items()}
    for tid, v in spots.items():  # each id stays on one person (the faces are 500 px apart in the photo)
        assert np.abs(v - v[0]).max() < 20, tid
    assert abs(spots[0][0, 0] - spots[1][0, 0]) > 300
    # "largest" picks one of them once and keeps it, even though the two are nearly the same size
    sel = FaceTracker("dlib", face="largest", detect_every=3)
    assert len({a.params["track_id"] for f in frames for a in sel.align(f, size=64)}) == 1


# ------------------------------------------------------------------------------------------
# frame folders
# ------------------------------------------------------------------------------------------
def test_frames_in_natural_order_others_skipped(tmp_path):
    for name in ("frame10.png", "frame2.png", "frame1.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    frames, skipped = list_frames(tmp_path)
    assert [p.name for p in frames] == ["frame1.png", "frame2.png", "frame10.png"]
    assert [p.name for p in skipped] == ["notes.txt"]
    assert sorted(["a10", "a9", "b1", "a09"], key=natural_key) == ["a09", "a9", "a10", "b1"]


def test_bad_clips_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="has no image frames"):
        list_frames(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"has no image frames \(1 other entries skipped\)"):
        list_frames(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        open_clip(tmp_path / "missing")
    Image.new("RGB", (32, 32)).save(tmp_path / "a1.png")
    Image.new("RGB", (40, 32)).save(tmp_path / "a2.png")
    with pytest.raises(InputError, match="all frames of a clip must have one size"):
        list(open_clip(tmp_path).frames())
    with pytest.raises(InputError, match="is one image, not a clip"):
        open_clip(tmp_path / "a1.png")


# ------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------
def _write_frames(folder: Path, frames, pattern: str) -> list[str]:
    folder.mkdir()
    stems = []
    for i, f in enumerate(frames):
        name = pattern.format(i + 1)
        Image.fromarray(f).save(folder / name)
        stems.append(Path(name).stem)
    return stems


def test_align_video_writes_one_crop_per_frame(pan, tmp_path, capsys):
    from pastiche_core.cli import main

    stems = _write_frames(tmp_path / "clip", pan["frames"][:5], "shot_{}.png")
    (tmp_path / "clip" / "notes.txt").write_text("x")
    assert main(["align", str(tmp_path / "clip"), "--out", str(tmp_path / "crops"), "--video", "--size", "128"]) == 0
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == sorted(f"{s}.png" for s in stems)
    assert Image.open(tmp_path / "crops" / "shot_3.png").size == (128, 128)
    err = capsys.readouterr().err
    assert "skipped 1 entries" in err and "notes.txt" in err
    # the output folder may not be the frames folder (the crops would replace PNG frames)
    assert main(["align", str(tmp_path / "clip"), "--out", str(tmp_path / "clip"), "--video"]) == 2
    assert "is the frames folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["align", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"), "--video"]) == 2
    assert "has no image frames" in capsys.readouterr().err


def test_align_video_all_faces_are_named_by_track(dlib_ok, tmp_path):
    from pastiche_core.cli import main

    frames, _, _ = synthetic_clip(_rgb(TWO_FACES), 3, window=(960, 480), center=(512, 256), amplitude=(30, 10),
                                  out_width=480, noise=3.0, seed=3)
    stems = _write_frames(tmp_path / "clip", frames, "{:04d}.jpg")
    assert main(["align", str(tmp_path / "clip"), "--out", str(tmp_path / "out"), "--video", "--face", "all",
                 "--size", "64"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{s}_face{k}.png" for s in stems for k in (0, 1))


def test_stylize_video_writes_every_frame(pan, tmp_path):
    from pastiche_core.cli import main

    frames = pan["frames"][:2]
    stems = _write_frames(tmp_path / "clip", frames, "f{}.jpg")
    blank = np.full_like(frames[0], 128)
    Image.fromarray(blank).save(tmp_path / "clip" / "f4.png")  # no face: written unchanged
    code = main(["stylize", str(tmp_path / "clip"), "--video", "--out", str(tmp_path / "out"),
                 "--checkpoints", str(tmp_path / "no_checkpoints"), "--batch", "2", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{s}.png" for s in stems + ["f4"])
    out = np.asarray(Image.open(tmp_path / "out" / "f2.png").convert("RGB"))
    assert out.shape == frames[1].shape
    src = np.asarray(Image.open(tmp_path / "clip" / "f2.jpg").convert("RGB"))
    diff = np.abs(out.astype(int) - src.astype(int)).max(axis=2)
    assert diff[120:140, 120:140].mean() > 10  # the face (frame centre) is pasted in
    assert diff[-20:, :].max() <= 1  # the bottom of the frame, far from the face mask, is not
    assert Image.open(tmp_path / "out" / "f2.png").text["pastiche:weights"].startswith("DEMO")


def test_video_file_with_pyav(pan, tmp_path):
    from conftest import _installed

    if not _installed("av"):  # decided from metadata: where the `video` extra is installed, a broken av fails
        pytest.skip("the video extra is not installed: pip install -e '.[video]'")
    import av
    from pastiche_core.cli import main

    path = tmp_path / "pan.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        stream.options = {"qscale": "2"}
        for f in pan["frames"][:3]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert main(["align", str(path), "--out", str(tmp_path / "crops"), "--video", "--size", "64"]) == 0
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == [f"pan_{i:06d}.png" for i in (1, 2, 3)]


# ------------------------------------------------------------------------------------------
# the node in clip mode
# ------------------------------------------------------------------------------------------
STUB = Path(__file__).resolve().parent / "comfy_stub"


@pytest.fixture(scope="module")
def face_nodes(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base_video")
    sys.path.insert(0, str(STUB))
    name = "pastiche_pack_video_test"
    try:
        import folder_paths

        folder_paths.set_base(str(base))
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        yield {n.GET_SCHEMA().node_id: n for n in module.NODES}
    finally:
        sys.path.remove(str(STUB))
        for key in list(sys.modules):
            if key.split(".")[0] in ("folder_paths", "comfy", "comfy_api") or key.startswith(name):
                del sys.modules[key]


def test_align_face_node_clip_mode(face_nodes, pan):
    import torch

    frames = pan["frames"][:6]
    batch = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)
    align = face_nodes["PasticheAlignFace"]
    names = [i.id for i in align.GET_SCHEMA().inputs]
    # new inputs after the original five: stored workflows stay valid
    assert names[:5] == ["image", "detector", "face", "index", "size"] and names[6:8] == ["clip", "smoothing"]
    crops, info, soft, hard = align.execute(image=batch, detector="dlib", face="largest", size=256, clip=True,
                                            smoothing=0.5)
    assert crops.shape == (6, 256, 256, 3) and [b for b, _ in info.faces] == list(range(6))
    assert soft.shape == hard.shape == (6, *frames[0].shape[:2])  # one mask per tracked crop, in the frame
    # the same transforms as the tracker's (smoothed, not per frame)
    ref = FaceTracker("dlib", smoothing=0.5)
    for (b, af), f in zip(info.faces, frames):
        expect = ref.align(f, size=256)[0]
        assert np.allclose(af.quad_effective, expect.quad_effective) and af.params["track_id"] == 0
    assert any(not np.allclose(af.quad, af.params["raw_quad"]) for _, af in info.faces)
    single = align.execute(image=batch, detector="dlib", face="largest", size=256)[0]  # clip off: as before
    assert mean_crop_change(list((crops.numpy() * 255).round())) < mean_crop_change(list((single.numpy() * 255).round()))
    pasted = face_nodes["PastichePasteFaceBack"].execute(image=batch, faces=1.0 - crops, face_info=info)[0]
    assert pasted.shape == batch.shape
    changed = (pasted - batch).abs().amax(-1) > 2 / 255
    assert changed[:, 100:150, 100:150].float().mean() > 0.9 and not changed[:, -8:, :].any()
