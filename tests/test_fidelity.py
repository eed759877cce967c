"""KID and FID without pairs: the estimators are their formulas, the Inception weights arrive checked
or not at all, a local copy works offline, a missing one stops the run in one line, and a contact sheet
is written."""

import hashlib
import http.server
import threading
import urllib.request
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import run_cli, write_clip, write_noisy_images
from vidcycle.errors import DownloadError
from vidcycle.quality import fidelity


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """An Inception-v3 state dict of torch-fidelity's layout with random weights (half precision: half
    the bytes): it runs like the real one, its numbers mean nothing."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    path = tmp_path_factory.mktemp("weights") / "stand-in.pth"
    torch.save({key: value.half() if value.is_floating_point() else value
                for key, value in net.state_dict().items()}, path)
    return path


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- the estimators

def direct_kid(a, b):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over the whole sets."""
    d = a.shape[1]
    k = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return ((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
            - 2 * kab.mean())


def direct_fid(a, b):
    """||mu_a - mu_b||^2 + Tr(Sa) + Tr(Sb) - 2 Tr((Sa^1/2 Sb Sa^1/2)^1/2), by symmetric eigen-decompositions."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(sa)
    root = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root @ sb @ root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def test_kid_and_fid_are_their_formulas_on_fixed_features():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (40, 6))
    b = rng.normal(0.3, 1.2, (30, 6))
    mean, std, size = fidelity.kid(a, b, subsets=1, subset_size=1000)  # one subset: every sample
    assert size == 30 and std == 0
    # a subset of 30 of the 40: the same estimator on those 30
    chosen = np.random.RandomState(2020).choice(40, 30, replace=False)
    assert mean == pytest.approx(direct_kid(a[chosen], b[np.random.RandomState(2020).permutation(30)]), rel=1e-9)
    mean_all, _, _ = fidelity.kid(a[:30], b, subsets=1)
    assert mean_all == pytest.approx(direct_kid(a[:30], b), rel=1e-9)
    assert fidelity.fid(a, b) == pytest.approx(direct_fid(a, b), rel=1e-6)
    assert abs(fidelity.fid(a, a)) < 1e-6  # a set against itself


# ---------------------------------------------------------------- getting the weights

class _Server:
    def __init__(self, folder):
        handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(folder))  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()


def test_the_fetch_checks_the_hash_and_a_wrong_one_leaves_nothing(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCYCLE_HOME", str(tmp_path / "home"))
    server = _Server(stand_in.parent)
    try:
        url = f"{server.url}/{stand_in.name}"
        with pytest.raises(DownloadError, match="not stored"):
            fidelity.fetch_weights(url, sha256_prefix="00000000")
        folder = tmp_path / "home" / "features"
        assert not folder.exists() or not any(folder.iterdir())  # no weights, no partial file
        path = fidelity.fetch_weights(url, sha256_prefix=sha256(stand_in)[:8])
        assert path == fidelity.features_path() and sha256(path) == sha256(stand_in)
        assert [p.name for p in folder.iterdir()] == [fidelity.WEIGHTS_FILE]
    finally:
        server.close()


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


@pytest.fixture
def domains(tmp_path):
    x = write_noisy_images(tmp_path / "x", 5, (60, 140, 60), seed=0, size=(48, 32))
    y = write_noisy_images(tmp_path / "y", 4, (220, 220, 235), seed=1, size=(40, 40))
    write_clip(y / "clip.mp4", frames=6, size=(48, 32))
    return x, y


def test_features_file_runs_offline_and_writes_a_contact_sheet(stand_in, domains, tmp_path, monkeypatch,
                                                                tiny_model_file):
    x, y = domains
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    sheet = tmp_path / "sheet.png"
    result = run_cli("eval", "--model", str(tiny_model_file), "--x", str(x), "--y", str(y), "--features",
                     str(stand_in), "--sheet", str(sheet), "--frames-per-clip", "3", "--json")
    assert result.exit_code == 0, result.output
    import json
    report = json.loads(result.stdout)
    assert report["x_images"] == 5 and report["y_images"] == 4 + 3
    assert set(report["metrics"]) == {"model", "identity", "reinhard"}
    assert all(np.isfinite(v) for m in report["metrics"].values() for v in m.values())
    assert "not comparable with published" in report["features"]
    import cv2
    picture = cv2.imread(str(sheet))
    assert picture is not None and picture.shape[0] > 3 * 20  # three rows of thumbnails


def test_missing_weights_stop_before_anything_in_one_line(domains, tmp_path, monkeypatch, tiny_model_file):
    x, y = domains
    monkeypatch.setenv("VIDCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fidelity, "WEIGHTS_URL", "http://127.0.0.1:9/none.pth")  # nothing listens there
    monkeypatch.setattr(fidelity.find_weights, "__defaults__", (None, True, "http://127.0.0.1:9/none.pth",
                                                                fidelity.WEIGHTS_SHA256_PREFIX, None))
    monkeypatch.chdir(tmp_path)
    result = run_cli("eval", "--model", str(tiny_model_file), "--x", str(x), "--y", str(y))
    assert result.exit_code == 6 and "Traceback" not in result.output  # a download's exit code
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert fidelity.WEIGHTS_FILE in line and str(tmp_path / "home" / "features") in line and "--features" in line
    assert not list(tmp_path.glob("*.png"))


def test_a_local_copy_that_is_not_there_is_named(domains, tmp_path, tiny_model_file):
    x, y = domains
    result = run_cli("eval", "--model", str(tiny_model_file), "--x", str(x), "--y", str(y), "--features",
                     str(tmp_path / "nope.pth"))
    assert result.exit_code == 4 and "nope.pth" in result.stderr and "Traceback" not in result.output


# ---------------------------------------------------------------- KID while training

def test_a_training_run_scores_kid_at_each_checkpoint(stand_in, tmp_path):
    import json
    x = write_noisy_images(tmp_path / "x", 8, (60, 140, 60), seed=0, size=(40, 36))
    y = write_noisy_images(tmp_path / "y", 8, (220, 220, 235), seed=1, size=(40, 36))
    result = run_cli("train", "--x", str(x), "--y", str(y), "--recipe", "tiny", "--workers", "0", "--no-export",
                     "--set", "schedule.iterations=6", "--set", "schedule.iterations_decay=0",
                     "--set", "schedule.checkpoint_every=3", "--kid", "--features", str(stand_in),
                     "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    scores = [row for row in rows if "kid_x1000" in row]
    assert [row["iteration"] for row in scores] == [3, 6]
    assert all(np.isfinite(row["kid_x1000"]) for row in scores)
    assert (tmp_path / "run" / "loss_curves.png").exists()


def test_kid_without_weights_stops_before_the_run_folder_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fidelity.find_weights, "__defaults__", (None, True, "http://127.0.0.1:9/none.pth",
                                                                fidelity.WEIGHTS_SHA256_PREFIX, None))
    x = write_noisy_images(tmp_path / "x", 4, (60, 140, 60), seed=0)
    y = write_noisy_images(tmp_path / "y", 4, (220, 220, 235), seed=1)
    result = run_cli("train", "--x", str(x), "--y", str(y), "--recipe", "tiny", "--kid", "--out",
                     str(tmp_path / "run"))
    assert result.exit_code == 6 and fidelity.WEIGHTS_FILE in result.stderr
    assert not (tmp_path / "run").exists()


def test_kid_with_a_file_that_is_not_inception_weights_stops_before_the_run_folder_exists(tmp_path):
    not_weights = tmp_path / "holiday.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, not_weights)
    x = write_noisy_images(tmp_path / "x", 4, (60, 140, 60), seed=0)
    y = write_noisy_images(tmp_path / "y", 4, (220, 220, 235), seed=1)
    result = run_cli("train", "--x", str(x), "--y", str(y), "--recipe", "tiny", "--kid", "--features",
                     str(not_weights), "--out", str(tmp_path / "run"))
    assert result.exit_code == 5 and "holiday.pth" in result.stderr and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("vidcycle: error:")]
    assert len(errors) == 1 and "do not fit Inception-v3" in errors[0]
    assert not (tmp_path / "run").exists()
