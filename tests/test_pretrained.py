"""Pretrained registry: downloads from a local HTTP server with Range support.

The server runs on 127.0.0.1 in a thread and serves a synthetic NVIDIA-format
pickle; the registry is pointed at it through ``base_url`` or
``$IPL_PRETRAINED_URL``, never by patching the library.
"""

import hashlib
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from stylegan2 import CheckpointError, load_generator
from stylegan2.nvidia import convert_nvidia_pickle
from stylegan2.pretrained import NVIDIA_BASE_URL, REGISTRY, DownloadError, download_file, fetch
from test_nvidia_convert import write_nvidia_pickle

REPO = Path(__file__).resolve().parents[1]


class FileServer:
    """Serves ``files`` under ``/models/<name>``; honours ``Range: bytes=N-``.

    Knobs for the next responses: ``cut_after`` (send only that many body
    bytes, then close, once), ``ignore_range`` (always answer 200 with the
    whole file). ``ranges`` records each request's Range header.
    """

    def __init__(self, files):
        self.files = dict(files)
        self.cut_after = None
        self.ignore_range = False
        self.ranges = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                data = server.files.get(self.path.rsplit("/", 1)[-1])
                if data is None or not self.path.startswith("/models/"):
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = 0
                if requested and not server.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                self.wfile.write(body)
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def fixture_pickle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixture")
    write_nvidia_pickle(folder / "net.pkl", folder / "sentinel")
    return (folder / "net.pkl").read_bytes()


@pytest.fixture
def server(fixture_pickle):
    srv = FileServer({f"{name}.pkl": fixture_pickle for name in REGISTRY})
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    monkeypatch.delenv("IPL_PRETRAINED_DIR", raising=False)
    monkeypatch.delenv("IPL_PRETRAINED_URL", raising=False)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_registry_points_at_nvidia_pickles():
    assert {name: m.resolution for name, m in REGISTRY.items()} == {
        "ffhq": 1024, "metfaces": 1024, "afhqdog": 512, "afhqcat": 512, "afhqwild": 512,
    }
    for name, model in REGISTRY.items():
        assert model.url() == f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/{name}.pkl"
        assert model.url() == f"{NVIDIA_BASE_URL}/{name}.pkl"


def test_fresh_download_is_verified_converted_and_loadable(server, fixture_pickle, tmp_path, capsys):
    out = fetch("afhqdog", root=tmp_path, base_url=server.url, progress=False)
    assert out == tmp_path / "afhqdog.pt"
    assert (tmp_path / "afhqdog.pkl").read_bytes() == fixture_pickle
    assert not (tmp_path / "afhqdog.pkl.part").exists()
    digest = sha256(fixture_pickle)
    assert (tmp_path / "afhqdog.pkl.sha256").read_text().split()[0] == digest
    assert digest in capsys.readouterr().err  # a first download prints the hash it records

    g, info = load_generator("afhqdog", pretrained_dir=tmp_path)
    assert info["meta"]["source"] == "afhqdog.pkl" and info["meta"]["source_sha256"] == digest
    (tmp_path / "direct").mkdir()
    (tmp_path / "direct" / "net.pkl").write_bytes(fixture_pickle)
    direct = convert_nvidia_pickle(tmp_path / "direct" / "net.pkl")[0].state_dict()
    assert all(torch.equal(v, direct[k]) for k, v in g.state_dict().items())
    assert server.ranges == [None]


def test_installed_model_from_another_pickle_is_refused(server, tmp_path):
    fetch("afhqdog", root=tmp_path, base_url=server.url, progress=False)
    load_generator("afhqdog", pretrained_dir=tmp_path)
    (tmp_path / "afhqdog.pkl.sha256").write_text("ab" * 32 + "  afhqdog.pkl\n")
    with pytest.raises(CheckpointError, match=r"converted from a pickle with SHA-256 .* recorded hash .*--force"):
        load_generator("afhqdog", pretrained_dir=tmp_path)


def test_load_generator_downloads_on_first_use_through_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(tmp_path))
    monkeypatch.setenv("IPL_PRETRAINED_URL", server.url)
    with pytest.raises(CheckpointError, match="python scripts/download_pretrained.py afhqcat"):
        load_generator("afhqcat")
    assert server.ranges == []  # nothing fetched without download=True
    g, info = load_generator("afhqcat", download=True, progress=False)
    assert (tmp_path / "afhqcat.pt").is_file() and info["path"] == str(tmp_path / "afhqcat.pt")
    assert info["config"]["size"] == 32


def test_interrupted_download_resumes_with_a_range_request(server, fixture_pickle, tmp_path):
    cut = len(fixture_pickle) // 3
    server.cut_after = cut
    with pytest.raises(DownloadError, match="Run the same command again to resume"):
        fetch("ffhq", root=tmp_path, base_url=server.url, progress=False)
    assert (tmp_path / "ffhq.pkl.part").stat().st_size == cut
    assert not (tmp_path / "ffhq.pkl").exists() and not (tmp_path / "ffhq.pt").exists()

    fetch("ffhq", root=tmp_path, base_url=server.url, progress=False)
    assert server.ranges == [None, f"bytes={cut}-"]
    assert (tmp_path / "ffhq.pkl").read_bytes() == fixture_pickle
    assert (tmp_path / "ffhq.pt").is_file() and not (tmp_path / "ffhq.pkl.part").exists()


def test_resume_against_a_server_without_range_support_restarts(server, fixture_pickle, tmp_path):
    (tmp_path / "ffhq.pkl.part").write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    fetch("ffhq", root=tmp_path, base_url=server.url, progress=False)
    assert server.ranges == ["bytes=29-"]
    assert (tmp_path / "ffhq.pkl").read_bytes() == fixture_pickle


def test_complete_part_file_is_finished_without_refetching(server, fixture_pickle, tmp_path):
    (tmp_path / "metfaces.pkl.part").write_bytes(fixture_pickle)  # killed after the last byte, before the rename
    fetch("metfaces", root=tmp_path, base_url=server.url, progress=False)
    assert server.ranges == [f"bytes={len(fixture_pickle)}-"]
    assert (tmp_path / "metfaces.pkl").read_bytes() == fixture_pickle and (tmp_path / "metfaces.pt").is_file()


def test_corrupted_transfer_is_detected_and_not_installed(server, fixture_pickle, tmp_path):
    fetch("afhqwild", root=tmp_path, base_url=server.url, progress=False)  # records the hash
    (tmp_path / "afhqwild.pkl").unlink()
    (tmp_path / "afhqwild.pt").unlink()
    corrupted = bytearray(fixture_pickle)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.files["afhqwild.pkl"] = bytes(corrupted)

    with pytest.raises(DownloadError, match="does not match.*nothing was installed"):
        fetch("afhqwild", root=tmp_path, base_url=server.url, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afhqwild.pkl.sha256"]


def test_tampered_installed_pickle_is_refused(server, tmp_path):
    fetch("afhqwild", root=tmp_path, base_url=server.url, progress=False)
    (tmp_path / "afhqwild.pt").unlink()
    with open(tmp_path / "afhqwild.pkl", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DownloadError, match=r"does not match.*Delete .*afhqwild\.pkl"):
        fetch("afhqwild", root=tmp_path, base_url=server.url, progress=False)
    assert not (tmp_path / "afhqwild.pt").exists()


def test_size_and_hash_requirements_are_enforced(server, fixture_pickle, tmp_path):
    url = f"{server.url}/ffhq.pkl"
    with pytest.raises(DownloadError, match=f"size {len(fixture_pickle)} bytes, expected {len(fixture_pickle) + 1}"):
        download_file(url, tmp_path / "a.pkl", expected_size=len(fixture_pickle) + 1, progress=False)
    with pytest.raises(DownloadError, match="does not match"):
        download_file(url, tmp_path / "a.pkl", expected_sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    digest = download_file(url, tmp_path / "a.pkl", sha256(fixture_pickle), len(fixture_pickle), progress=False)
    assert digest == sha256(fixture_pickle) and (tmp_path / "a.pkl").read_bytes() == fixture_pickle


def test_unreachable_server_is_a_clear_error(tmp_path, server):
    with pytest.raises(DownloadError, match="server answered 404"):
        download_file(f"{server.url}/missing.pkl", tmp_path / "m.pkl", progress=False)


def test_script_downloads_and_lists(server, tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "download_pretrained.py")]
    result = subprocess.run(command + ["afhqdog", "--dir", str(tmp_path), "--base-url", server.url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "afhqdog.pt").is_file() and "afhqdog.pkl" in result.stderr  # the progress bar
    listing = subprocess.run(command + ["--list", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert "not installed" not in lines["afhqdog"] and "not installed" in lines["ffhq"]
