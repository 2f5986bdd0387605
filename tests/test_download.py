"""``python -m pastiche_core download`` and :mod:`pastiche_core.download` against a loopback
server that speaks the Hugging Face Hub's endpoints (tree listing, resolve with HEAD, GET and
Range), serving small fixture files that our loaders accept. Never the real internet.

huggingface_hub is in the ``test`` extra: without it this module fails to import, on purpose.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import huggingface_hub  # noqa: F401  (the download extra: a missing one must fail, not skip)
import pytest
import torch

from pastiche_core.download import REPO_ID, DownloadError, download_style

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory) -> dict[str, bytes]:
    return make_repo_files(tmp_path_factory.mktemp("repo"))


def make_repo_files(d: Path) -> dict[str, bytes]:
    """models/... -> bytes: a small DualStyleGAN (float16 halves it), a bank, a sampler."""
    from pastiche_core.models import DualStyleGAN
    from pastiche_core.models.sampler import StyleSampler
    from pastiche_core.styles import StyleBank

    torch.manual_seed(0)
    g = DualStyleGAN(32, style_dim=512, n_mlp=8, channel_multiplier=1)  # the official family, at 32 px
    torch.save({"g_ema": {k: v.half() for k, v in g.state_dict().items()}}, d / "generator.pt")
    StyleBank(["a.jpg", "b.jpg", "c.jpg"], torch.randn(3, 8, 512)).save_npy(d / "exstyle_code.npy")
    torch.save(StyleSampler().official_state(), d / "sampler.pt")
    files = {f"models/anime/{p.name}": p.read_bytes() for p in d.iterdir()}
    files["models/anime/refined_exstyle_code.npy"] = files["models/anime/exstyle_code.npy"]
    files["models/encoder.pt"] = b"served but never asked for: the test folders already hold encoder.pt"
    files["models/cartoon/generator.pt"] = b"another style, not fetched for anime"
    files["README.md"] = b"outside models/"
    return files


class Hub:
    """The Hub's endpoints that huggingface_hub and our download use, over ``files``."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.drop_once: set[str] = set()  # paths whose next GET stops halfway
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                prefix = f"/{REPO_ID}/resolve/"
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                if not path.startswith(prefix):
                    return None
                name = path[len(prefix):].split("/", 1)[1]
                return name, hub.files.get(name)

            def _headers(self, name, data, status=200, length=None):
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) if length is None else length))
                return status

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, None))
                found = self._file()
                if not found or found[1] is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._headers(*found)
                self.end_headers()

            def do_GET(self):
                rng = self.headers.get("Range")
                hub.requests.append(("GET", self.path, rng))
                url = urllib.parse.urlsplit(self.path)
                tree = f"/api/models/{REPO_ID}/tree/"
                if url.path.startswith(tree):
                    folder = urllib.parse.unquote(url.path[len(tree):]).split("/", 1)[1]
                    body = json.dumps([{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                       for p, b in sorted(hub.files.items()) if p.startswith(folder + "/")]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                found = self._file()
                if not found or found[1] is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                name, data = found
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                if rng:
                    self._headers(name, data, 206, len(body))
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self._headers(name, data)
                self.end_headers()
                if name in hub.drop_once:
                    hub.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(repo_files, monkeypatch):
    server = Hub(repo_files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    yield server
    server.close()


@pytest.fixture
def models(tmp_path):
    d = tmp_path / "checkpoint"
    d.mkdir()
    (d / "encoder.pt").write_bytes(b"already here: kept as it is")
    return d


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_full_download(hub, models, repo_files):
    seen = []
    written = download_style("anime", models, progress=lambda name, done, total: seen.append((name, done, total)))
    assert tree(models) == ["anime", "anime/exstyle_code.npy", "anime/generator.pt", "anime/refined_exstyle_code.npy",
                            "anime/sampler.pt", "encoder.pt"]  # the official files only: no .part, no hub cache
    assert sorted(p.name for p in written) == ["exstyle_code.npy", "generator.pt", "refined_exstyle_code.npy", "sampler.pt"]
    for name in ("generator.pt", "exstyle_code.npy", "sampler.pt"):
        assert (models / "anime" / name).read_bytes() == repo_files[f"models/anime/{name}"]
    assert (models / "encoder.pt").read_bytes() == b"already here: kept as it is"
    fetched = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    assert len(fetched) == 4 and not any("encoder.pt" in p or "cartoon" in p for p in fetched)
    assert seen[-1][1] == seen[-1][2] and {s[0] for s in seen} >= {"anime/generator.pt"}
    # everything there: a second run fetches nothing
    n = len(hub.requests)
    assert download_style("anime", models) == []
    assert not [r for r in hub.requests[n:] if r[0] == "GET" and "/resolve/" in r[1]]


def test_resume_after_a_dropped_connection_and_a_left_part(hub, models, repo_files):
    gen = repo_files["models/anime/generator.pt"]
    hub.drop_once.add("models/anime/generator.pt")
    bank = repo_files["models/anime/exstyle_code.npy"]
    (models / "anime").mkdir()
    (models / "anime" / "exstyle_code.npy.part").write_bytes(bank[:100])  # left by an interrupted run
    download_style("anime", models)
    assert (models / "anime" / "generator.pt").read_bytes() == gen
    assert (models / "anime" / "exstyle_code.npy").read_bytes() == bank
    gets = [(p, r) for m, p, r in hub.requests if m == "GET" and "/resolve/" in p]
    gen_gets = [r for p, r in gets if p.endswith("anime/generator.pt")]
    assert gen_gets[0] is None and len(gen_gets) == 2  # resumed from what had arrived, not restarted:
    assert 0 < int(gen_gets[1][6:-1]) <= len(gen) // 2  # (whole chunks of what the server sent before it stopped)
    assert [r for p, r in gets if p.endswith("anime/exstyle_code.npy")] == ["bytes=100-"]
    assert not [p for p in tree(models) if p.endswith(".part") or "pst-check" in p]


def test_a_corrupted_file_is_rejected_and_removed(hub, models, repo_files):
    good = repo_files["models/anime/generator.pt"]
    hub.files["models/anime/generator.pt"] = good[: len(good) // 3]
    with pytest.raises(DownloadError, match=r"downloaded 'anime/generator.pt' is not a valid generator.pt, removed it"):
        download_style("anime", models)
    assert not (models / "anime" / "generator.pt").exists()
    assert not [p for p in tree(models) if "generator" in p]  # no .part, no file under a hidden name


def test_names_from_the_server_stay_inside_the_folder(hub, models, tmp_path):
    hub.files["models/anime/../../../escaped.pt"] = b"x"
    hub.files["models/anime/.hidden.pt"] = b"x"
    download_style("anime", models)
    assert not (tmp_path / "escaped.pt").exists() and not list(tmp_path.rglob("escaped.pt"))
    assert not (models / "anime" / ".hidden.pt").exists()


def test_unknown_style_names_the_remote_ones(hub, models):
    with pytest.raises(DownloadError, match=r"style 'nope' is not in public-data/DualStyleGAN \(its styles: anime, cartoon\)"):
        download_style("nope", models)


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "pastiche_core", "download", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=600)


def test_cli_download_and_offline_errors(hub, models, tmp_path):
    r = cli("--style", "anime", "--to", models, env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 0, r.stderr
    assert "4 files downloaded for style anime" in r.stdout and "[100%] anime/generator.pt" in r.stderr
    assert (models / "anime" / "generator.pt").is_file()

    target = tmp_path / "empty"
    for env in ({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"},  # nothing listens there
                {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"}):
        r = cli("--style", "anime", "--to", target, env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert f"put them, unchanged, in '{target}'" in lines[0] and "huggingface.co/public-data/DualStyleGAN" in lines[0]
        assert not target.exists() or tree(target) == []


def test_one_writer_per_part_file(hub, models):
    import fcntl

    (models / "anime").mkdir()
    with open(models / "anime" / "exstyle_code.npy.part", "ab") as held:  # another run's download
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="'anime/exstyle_code.npy' is being downloaded by another process"):
            download_style("anime", models)
    download_style("anime", models)  # released: this run completes it
    assert (models / "anime" / "exstyle_code.npy").is_file() and not list(models.rglob("*.part"))
