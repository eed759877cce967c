"""The model store: import, list, info, and pull from a local HTTP server (never the internet)."""

import json
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import vidcycle
from conftest import reference_state
from conftest import run_cli as run
from vidcycle.errors import DownloadError, ModelError, OutputExistsError


@pytest.mark.parametrize("blocks", [6, 9])
def test_import_reference_checkpoint_then_translate(tmp_path, blocks):
    torch.save(reference_state(blocks, 16), tmp_path / "latest_net_G_A.pth")
    result = run("models", "import", tmp_path / "latest_net_G_A.pth", "--name", "h2z", "--from", "horse",
                 "--to", "zebra")
    assert result.exit_code == 0, result.output
    listing = json.loads(run("models", "list", "--json").output)
    assert [(m["name"], m["n_blocks"], m["ngf"], m["from"], m["to"]) for m in listing
            if m["origin"] == "store"] == [("h2z", blocks, 16, "horse", "zebra")]
    info = run("models", "info", "h2z")
    assert f"resnet {blocks} blocks, ngf 16" in info.output and "horse -> zebra" in info.output
    model = vidcycle.load_model("h2z", device="cpu")
    out = model.translate(np.zeros((31, 47, 3), np.uint8))
    assert out.shape == (31, 47, 3)
    assert "h2z" in vidcycle.available_models()


def test_import_refuses_to_overwrite_without_flag(tmp_path):
    torch.save(reference_state(6, 8), tmp_path / "a.pth")
    assert run("models", "import", tmp_path / "a.pth", "--name", "a").exit_code == 0
    again = run("models", "import", tmp_path / "a.pth", "--name", "a")
    assert again.exit_code == OutputExistsError.exit_code == 8 and "pass --overwrite to replace it" in again.output
    assert run("models", "import", tmp_path / "a.pth", "--name", "a", "--overwrite").exit_code == 0


def test_unknown_model_lists_what_exists(tmp_path):
    torch.save(reference_state(6, 8), tmp_path / "a.pth")
    run("models", "import", tmp_path / "a.pth", "--name", "mine")
    with pytest.raises(ModelError, match="available: .*mine"):
        vidcycle.load_model("nope")
    result = run("models", "info", "nope")
    assert result.exit_code == ModelError.exit_code
    assert "unknown model 'nope'" in result.output and "horse2zebra" in result.output


class _Server:
    """Serves canned responses on 127.0.0.1; `mode` picks good, truncated or garbage."""

    def __init__(self, payload: bytes):
        self.payload, self.mode = payload, "good"
        handler = partial(_Handler, self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, server_state, *args, **kwargs):
        self.state = server_state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith("/horse2zebra.pth"):
            self.send_error(404)
            return
        body = self.state.payload if self.state.mode != "garbage" else b"<html>not a model</html>" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.state.mode == "truncated":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()  # drop the connection half way
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv") / "horse2zebra.pth"
    torch.save(reference_state(9, 64), path)
    srv = _Server(path.read_bytes())
    yield srv
    srv.close()


def store_files(home):
    return sorted(p.name for p in (home / "models").glob("*")) if (home / "models").exists() else []


def test_pull_downloads_verifies_and_records_sha256(server, isolated_store, monkeypatch):
    monkeypatch.setenv("VIDCYCLE_PRETRAINED_URL", server.url)
    server.mode = "good"
    result = run("models", "pull", "horse2zebra")
    assert result.exit_code == 0, result.output
    assert store_files(isolated_store) == ["horse2zebra.safetensors"]
    info = json.loads(run("models", "info", "horse2zebra", "--json").output)
    import hashlib
    assert info["source_sha256"] == hashlib.sha256(server.payload).hexdigest()
    assert (info["from"], info["to"], info["n_blocks"], info["ngf"]) == ("horse", "zebra", 9, 64)


def test_interrupted_download_leaves_nothing(server, isolated_store, monkeypatch):
    monkeypatch.setenv("VIDCYCLE_PRETRAINED_URL", server.url)
    server.mode = "truncated"
    result = run("models", "pull", "horse2zebra")
    assert result.exit_code == DownloadError.exit_code
    assert "interrupted" in result.output or "download failed" in result.output
    assert "Traceback" not in result.output
    assert store_files(isolated_store) == []


def test_corrupt_download_leaves_nothing(server, isolated_store, monkeypatch):
    monkeypatch.setenv("VIDCYCLE_PRETRAINED_URL", server.url)
    server.mode = "garbage"
    result = run("models", "pull", "horse2zebra")
    assert result.exit_code == DownloadError.exit_code
    assert "not a valid generator" in result.output
    assert store_files(isolated_store) == []


def test_pull_unknown_name_lists_names():
    result = run("models", "pull", "horse2unicorn")
    assert result.exit_code == ModelError.exit_code
    assert "style_monet" in result.output and "summer2winter_yosemite" in result.output
