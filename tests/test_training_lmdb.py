"""Official lmdb datasets as ``--data`` (pastiche_core/training/lmdb_images.py).

The databases are written here in the exact format of the official ``prepare_data.py``
(DualStyleGAN ``model/stylegan/prepare_data.py``, rosinality's stylegan2-pytorch): one record
per image and resolution under ``f"{size}-{str(i).zfill(5)}"`` holding the image resized and
centre-cropped to that size as a JPEG of quality 100, and ``b"length"`` with the count as text.
The images are the real faces of tests/fixtures.

The tests that read an lmdb need the ``train`` extra (the ``lmdb`` package): they skip only
where it is not installed (CI installs it, so there they run, and a broken lmdb fails them).
"""
from __future__ import annotations

import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_train
from pastiche_core import cli
from pastiche_core.errors import InputError
from pastiche_core.training import lmdb_images as L
from pastiche_core.training.gan import ImageSet

FIX = Path(__file__).parent / "fixtures"
#: Four real faces (two aligned photos, a content face, a cartoon exemplar), all 256 px squares.
FACES = [FIX / "align" / "dsg_019706" / "aligned_256.png", FIX / "align" / "dsg_unsplash-rDEOVtE7vOs" / "aligned_256.png",
         FIX / "images" / "content_081680_256.jpg", FIX / "images" / "exemplar_cartoon_256.jpg"]
SIZE = 64  # the narrow training models of test_training_gan.py
TRAIN_COMMAND = ("pastiche_core.commands.train", "train a stage of the official pipeline")

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------
# Writing a database as prepare_data.py does
# --------------------------------------------------------------------------------------------
def encode(path: Path, size: int) -> bytes:
    """prepare_data.resize_and_convert: Resize(size) (shorter side, LANCZOS), CenterCrop(size),
    JPEG quality 100 (the faces are squares, so the crop keeps everything)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        assert im.width == im.height
        im = im.resize((size, size), Image.LANCZOS)
        buf = BytesIO()
        im.save(buf, format="jpeg", quality=100)
        return buf.getvalue()


def write_lmdb(folder: Path, sizes=(32, SIZE), images=FACES, *, length: bytes | None = None,
               replace: dict[str, bytes] | None = None, drop=()) -> Path:
    """``folder`` as prepare_data.py writes it (one write transaction per record, then
    ``length``); ``replace``/``drop`` put other bytes under a key or leave a record out, and
    ``length=b""`` leaves out the length record."""
    import lmdb

    folder.mkdir(parents=True, exist_ok=True)
    with lmdb.open(str(folder), map_size=1 << 27, readahead=False) as env:
        for i, path in enumerate(sorted(images, key=str)):
            for size in sizes:
                key = f"{size}-{str(i).zfill(5)}"
                if key in drop:
                    continue
                with env.begin(write=True) as txn:
                    txn.put(key.encode("utf-8"), (replace or {}).get(key, encode(path, size)))
        if length != b"":
            with env.begin(write=True) as txn:
                txn.put("length".encode("utf-8"), length if length is not None else str(len(images)).encode("utf-8"))
    return folder


def record(images: L.LmdbImageSet, key: str) -> bytes:
    """The stored bytes (through the set's environment: lmdb opens one per process)."""
    with images.env.begin() as txn:
        return bytes(txn.get(key.encode()))


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return write_lmdb(tmp_path_factory.mktemp("lmdb") / "faces_lmdb")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
@needs_train
def test_records_read_back_bit_identical(db):
    """Every record at both resolutions is the image PIL decodes from the stored bytes, in the
    stored order; a batch is the official ToTensor + Normalize(0.5, 0.5) with the asked flips."""
    for size in (32, SIZE):
        images = L.open_images(db, size)
        assert isinstance(images, L.LmdbImageSet) and isinstance(images, ImageSet)
        assert len(images) == len(FACES) and images.names == [f"{size}-{i:05d}" for i in range(len(FACES))]
        for i in range(len(FACES)):
            data = record(images, f"{size}-{i:05d}")
            assert data.startswith(b"\xff\xd8\xff")  # JPEG, as prepare_data.py stores it
            expected = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
            got = images.load(i)
            assert got.dtype == torch.uint8 and got.shape == (3, size, size)
            assert np.array_equal(got.permute(1, 2, 0).numpy(), expected), (size, i)
    images = L.open_images(db, SIZE)
    x = images.batch([3, 0], flip=[True, False])
    official = [torch.from_numpy(np.array(Image.open(BytesIO(record(images, f"{SIZE}-{i:05d}"))).convert("RGB")))
                .permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5) for i in (3, 0)]
    assert torch.allclose(x[0], official[0].flip(-1), atol=1e-6) and torch.allclose(x[1], official[1], atol=1e-6)
    # the records follow the sorted file order of the source folder, as prepare_data.py numbers them
    first = sorted(FACES, key=str)[0]
    assert np.array_equal(images.load(0).permute(1, 2, 0).numpy(),
                          np.asarray(Image.open(BytesIO(encode(first, SIZE))).convert("RGB")))


@needs_train
def test_streamed_and_read_only(db, monkeypatch):
    """Opening decodes nothing, a batch decodes its records only, and nothing is written next
    to the data (no lock file: lock=False; data.mdb unchanged)."""
    from pastiche_core.faces import io as fio

    lock = db / "lock.mdb"
    if lock.exists():
        lock.unlink()  # left by the writer; a reader must not make one
    before = (db / "data.mdb").read_bytes()
    calls = []
    real = fio.load_image_bytes
    monkeypatch.setattr(fio, "load_image_bytes", lambda data, name, **kw: calls.append(name) or real(data, name, **kw))
    images = L.open_images(db, SIZE)
    assert calls == []
    images.batch([2, 1])
    assert calls == [f"record '{SIZE}-00002' of lmdb '{db}'", f"record '{SIZE}-00001' of lmdb '{db}'"]
    images.close()
    assert not lock.exists() and (db / "data.mdb").read_bytes() == before
    assert L.lmdb_folder(db / "data.mdb") == db and L.lmdb_folder(db) == db  # the file names its folder
    assert L.lmdb_folder(FIX / "images") is None and L.lmdb_folder(None) is None


def test_image_folders_still_read_as_before(tmp_path):
    images = L.open_images(FIX / "images", 32)
    assert type(images) is ImageSet and images.names == ["content_081680_256.jpg", "exemplar_cartoon_256.jpg"]


# --------------------------------------------------------------------------------------------
# Errors: one clear line naming the database, the key or the missing package
# --------------------------------------------------------------------------------------------
@needs_train
def test_missing_resolution_lists_the_ones_held(tmp_path):
    folder = write_lmdb(tmp_path / "db", sizes=(32, 128, 1024))
    with pytest.raises(InputError, match=r"no 64 px images \(it holds: 32 px, 128 px, 1024 px\).*"
                                         r"prepare_data.py --size 64") as e:
        L.open_images(folder, 64)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    assert L.LmdbImageSet(folder, 1024).resolutions() == [32, 128, 1024]


@needs_train
def test_length_record_is_checked(tmp_path):
    with pytest.raises(InputError, match="has no 'length' record.*prepare_data.py"):
        L.open_images(write_lmdb(tmp_path / "nolength", length=b""), SIZE)
    with pytest.raises(InputError, match="'length' record that is not a number"):
        L.open_images(write_lmdb(tmp_path / "text", length=b"four"), SIZE)
    with pytest.raises(InputError, match=r"holds no images \(length 0\)"):
        L.open_images(write_lmdb(tmp_path / "zero", length=b"0"), SIZE)
    with pytest.raises(InputError, match="says it holds 40 images but has only 8 image records"):
        L.open_images(write_lmdb(tmp_path / "long", length=b"40"), SIZE)
    with pytest.raises(InputError, match=f"says it holds 4 images but has no record '{SIZE}-00003'"):
        L.open_images(write_lmdb(tmp_path / "short", drop=[f"{SIZE}-00003"]), SIZE)
    images = L.open_images(write_lmdb(tmp_path / "hole", drop=[f"{SIZE}-00002"]), SIZE)
    with pytest.raises(InputError, match=f"has no record '{SIZE}-00002' although it says it holds 4 images"):
        images.batch([1, 2])


@needs_train
def test_corrupt_and_hostile_records_are_refused_naming_the_key(tmp_path, monkeypatch):
    good = encode(FACES[0], SIZE)
    ico = BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(ico, format="ICO")
    # a 1-bit PNG declaring 12000 x 12000 = 144 MP (over the default limit of 100 MP) in a few KB
    bomb = BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000
    small = BytesIO()
    Image.new("RGB", (48, 48)).save(small, format="JPEG", quality=100)
    bad = {"64-00000": good[: len(good) // 2], "64-00001": b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"x" * 64,
           "64-00002": ico.getvalue()}
    folder = write_lmdb(tmp_path / "bad", replace=bad)
    images = L.open_images(folder, SIZE)  # the checks before training look at keys, not pixels
    expect = {0: "truncated or corrupt", 1: r"not an image in an accepted format \(JPEG, PNG",
              2: r"not an image in an accepted format \(JPEG, PNG"}
    for i, words in expect.items():
        with pytest.raises(InputError, match=f"--data: image record '64-0000{i}' of lmdb '.*' (is )?{words}") as e:
            images.load(i)
        assert "\n" not in str(e.value)
    images = L.open_images(write_lmdb(tmp_path / "bomb", replace={"64-00001": bomb.getvalue()}), SIZE)
    with pytest.raises(InputError, match=r"record '64-00001' .* is too large: 12000x12000 = 144000000 pixels.*"
                                         r"PASTICHE_MAX_PIXELS"):
        images.load(1)
    monkeypatch.setenv("PASTICHE_MAX_PIXELS", "1000")  # the one limit holds for records as for files
    with pytest.raises(InputError, match=r"record '64-00003' .* is too large: 64x64 = 4096 pixels"):
        images.load(3)
    monkeypatch.delenv("PASTICHE_MAX_PIXELS")
    images = L.open_images(write_lmdb(tmp_path / "small", replace={"64-00002": small.getvalue()}), SIZE)
    with pytest.raises(InputError, match=r"record '64-00002' .* is a 48x48 px image; the records '64-...' "):
        images.load(2)


@needs_train
def test_not_an_lmdb_and_not_a_folder(tmp_path):
    a_file = tmp_path / "faces.zip"
    a_file.write_bytes(b"PK\x03\x04")
    for path in (a_file, tmp_path / "nowhere"):
        with pytest.raises(InputError, match=r"is not a folder \(expected a folder of images, or an lmdb folder "
                                             r"made by prepare_data.py"):
            L.open_images(path, SIZE)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "data.mdb").write_bytes(b"not an lmdb at all" * 100)
    with pytest.raises(InputError, match="has a data.mdb that lmdb cannot open .*made by prepare_data.py"):
        L.open_images(fake, SIZE)
    with pytest.raises(InputError, match="has no images"):
        L.open_images(tmp_path, SIZE)  # a folder with neither images nor data.mdb
    with pytest.raises(InputError, match="keeps no file names.*give the folder of image files"):
        L.open_images(write_lmdb(tmp_path / "db"), SIZE).select(["a.png"])


def test_missing_lmdb_package_names_the_pip_command(tmp_path, monkeypatch):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / "data.mdb").write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb -> ImportError
    with pytest.raises(InputError, match=r"is an lmdb dataset; reading it needs the lmdb package: pip install lmdb "
                                         r"\(or pip install -e \"\.\[train\]\"\)"):
        L.open_images(folder, SIZE)


# --------------------------------------------------------------------------------------------
# Training from an lmdb
# --------------------------------------------------------------------------------------------
@pytest.fixture
def narrow_ckpts(tmp_path):
    """test_training_gan.py's 64 px narrow StyleGAN2 checkpoint (fixture weights)."""
    import test_training_gan as T

    T.narrow(True)
    try:
        yield T.make_checkpoints(tmp_path / "ck")
    finally:
        T.narrow(False)


def train(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setitem(cli.COMMANDS, "train", TRAIN_COMMAND)
    code = cli.main(["train", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@needs_train
def test_finetune_stylegan_trains_from_lmdb_as_from_the_same_images(db, narrow_ckpts, tmp_path, monkeypatch, capsys):
    """Two steps of finetune-stylegan through the CLI from the lmdb, and from a folder of the
    same 64 px images as PNG files: the same training, bit for bit."""
    from pastiche_core.training.checkpointing import load_state, state_path

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    images = L.open_images(db, SIZE)
    for i in range(len(images)):
        Image.fromarray(images.load(i).permute(1, 2, 0).numpy()).save(pngs / f"{i:05d}.png")
    states = {}
    for name, data in (("lmdb", db), ("folder", pngs)):
        out = tmp_path / name
        code, stdout, err = train(monkeypatch, capsys, "finetune-stylegan", "--checkpoints", narrow_ckpts,
                                  "--data", data, "--out", out, "--iters", 2, "--batch", 2, "--no-face-check")
        assert code == 0, err
        assert (out / "finetune-000002.pt").is_file()
        states[name] = load_state(state_path(out, "finetune-stylegan"))
    a, b = states["lmdb"], states["folder"]
    assert a["step"] == b["step"] == 2
    assert a["config"]["data"] == [f"{SIZE}-{i:05d}" for i in range(4)]
    for group, net in (("models", "g"), ("models", "d"), ("ema", "g_ema")):
        for k, v in b[group][net].items():
            assert torch.equal(a[group][net][k], v), (net, k)
    start = torch.load(narrow_ckpts / "stylegan2-ffhq-config-f.pt", weights_only=True)["g_ema"]
    assert any(not torch.equal(a["ema"]["g_ema"][k], v) for k, v in start.items())  # it did train


@needs_train
def test_cli_errors_are_one_line(tmp_path, narrow_ckpts, monkeypatch, capsys):
    wrong = write_lmdb(tmp_path / "db128", sizes=(128,))
    code, out, err = train(monkeypatch, capsys, "finetune-stylegan", "--checkpoints", narrow_ckpts,
                           "--data", wrong, "--out", tmp_path / "o")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data: lmdb") and "no 64 px images (it holds: 128 px)" \
        in lines[0], err
    # the stages that key codes by file name take image folders only, refused before any file is read
    for stage in ("destylize", "finetune", "refine-exstyle"):
        code, out, err = train(monkeypatch, capsys, stage, "--checkpoints", tmp_path / "nothing",
                               "--data", wrong, "--out", tmp_path / "o")
        assert code == 2 and err.strip().splitlines() == [
            f"error: {stage} needs --data as a folder of image files: it keys the style codes by file name, which "
            f"an lmdb dataset does not keep (finetune-stylegan and pretrain read lmdb)"], err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# The node: data_folder may be an lmdb, still inside ComfyUI's input folder
# --------------------------------------------------------------------------------------------
from test_nodes import demo, err, host, nodes, training_mod  # noqa: E402,F401 (fixtures of the node tests)


@needs_train
def test_node_trains_from_an_lmdb_data_folder(nodes, demo, host, tmp_path):
    import test_training_gan as T
    import folder_paths
    from pastiche_core.training.files import STYLEGAN_FFHQ

    ft = nodes["PasticheFineTuneStage"]
    stages = training_mod().STAGES
    inp = Path(folder_paths.get_input_directory())
    write_lmdb(inp / "ffhq_lmdb")
    write_lmdb(inp / "big_lmdb", sizes=(128,))
    assert ft.validate_inputs(save_name="s", data_folder="ffhq_lmdb") is True
    fp = ft.fingerprint_inputs(save_name="from_lmdb", data_folder="ffhq_lmdb")
    assert str(inp / "ffhq_lmdb" / "data.mdb") in [p for p, _, _ in fp]  # a rebuilt lmdb reruns the stage
    outside = write_lmdb(tmp_path / "outside_lmdb")
    with pytest.raises(err(host), match="inside ComfyUI's input folder"):
        ft.execute(model=demo, stage=stages[0], data_folder=str(outside), save_name="from_lmdb")
    with pytest.raises(err(host), match="destylize needs --data as a folder of image files"):
        ft.execute(model=demo, stage=stages[1], data_folder="ffhq_lmdb", save_name="from_lmdb")
    root = Path(folder_paths.get_folder_paths("dualstylegan")[0])
    T.narrow(True)
    try:
        T.make_checkpoints(tmp_path / "ck")
        (root / STYLEGAN_FFHQ).write_bytes((tmp_path / "ck" / STYLEGAN_FFHQ).read_bytes())
        with pytest.raises(err(host), match=r"lmdb '.*big_lmdb' has no 64 px images \(it holds: 128 px\)"):
            ft.execute(model=demo, stage=stages[0], data_folder="big_lmdb", save_name="from_big_lmdb",
                       iterations=1, batch_size=2)
        ft.execute(model=demo, stage=stages[0], data_folder="ffhq_lmdb", save_name="from_lmdb", iterations=1,
                   batch_size=2)
    finally:
        T.narrow(False)
        (root / STYLEGAN_FFHQ).unlink()
    assert (root / "from_lmdb" / "finetune-000001.pt").is_file()


@needs_train
def test_pretrain_reads_lmdb_face_photos(narrow_ckpts, tmp_path):
    """pretrain (official: the FFHQ lmdb) reads --data through the same reader (what it reads
    is the finetune-stylegan test's): an lmdb without the generator's resolution is its clear
    error, before any model is built or anything written."""
    from types import SimpleNamespace

    import test_training_gan as T
    from pastiche_core.training.dualstylegan_stage import pretrain_dualstylegan

    encoder = SimpleNamespace(space="z+")  # not reached: the data are checked first
    with pytest.raises(InputError, match=r"^--data: lmdb '.*big' has no 64 px images \(it holds: 128 px\)"):
        pretrain_dualstylegan(narrow_ckpts, write_lmdb(tmp_path / "big", sizes=(128,)), tmp_path / "o", encoder,
                              None, T.gan_config(2))
    assert not (tmp_path / "o").exists()
