"""Quality metrics, the Reinhard baseline and `vidcycle eval`."""

import json
import math
import shutil

import cv2
import numpy as np
import pytest

from conftest import run_cli
from vidcycle.metrics import delta_e, from_lab, psnr, ssim, to_lab
from vidcycle.models.names import reverse_name
from vidcycle.quality.evaluation import LabStats, evaluate, lab_stats, reinhard


def _noise(seed, size=(40, 48), low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (*size, 3), dtype=np.uint8)


def _smooth(seed, size=(40, 48)):
    """A smooth, natural-ish image (blurred noise) so SSIM has structure to compare."""
    image = cv2.GaussianBlur(_noise(seed, size).astype(np.float32), (0, 0), 3)
    return np.clip((image - image.mean()) * 4 + 128, 0, 255).astype(np.uint8)


def test_identical_images_give_infinite_psnr_and_ssim_one():
    image = _noise(0)
    assert psnr(image, image.copy()) == math.inf
    assert ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-9)
    assert delta_e(image, image.copy()) == pytest.approx(0.0, abs=1e-6)


def test_a_shift_of_ten_levels_gives_the_known_psnr():
    image = _noise(1, high=246)
    shifted = image + 10
    assert psnr(image, shifted) == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-9)
    assert psnr(shifted, image) == psnr(image, shifted)


def test_ssim_falls_with_damage_and_ignores_a_small_brightness_shift_more_than_noise():
    image = _smooth(2)
    noisy = np.clip(image + np.random.default_rng(3).normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    brighter = np.clip(image.astype(int) + 5, 0, 255).astype(np.uint8)
    assert ssim(image, noisy) < 0.8
    assert ssim(image, brighter) > 0.97
    assert ssim(image, noisy) == pytest.approx(ssim(noisy, image), abs=1e-12)
    assert -1 <= ssim(image, 255 - image) < 0.2


def test_lab_error_of_known_colours():
    size = (8, 8, 3)
    white, black = np.full(size, 255, np.uint8), np.zeros(size, np.uint8)
    grey = np.full(size, 119, np.uint8)  # sRGB 119 is L* 50.0 (CIE formula with the sRGB curve)
    assert delta_e(white, black) == pytest.approx(100.0, abs=0.01)
    assert delta_e(grey, black) == pytest.approx(50.0, abs=0.2)
    red, green = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    red[..., 0], green[..., 1] = 255, 255
    # sRGB primaries, D65: red (53.24, 80.09, 67.20), green (87.73, -86.18, 83.18)
    assert delta_e(red, green) == pytest.approx(math.dist((53.24, 80.09, 67.20), (87.73, -86.18, 83.18)), abs=0.5)


def test_lab_round_trip_is_lossless_to_a_level():
    image = _noise(4)
    assert np.abs(from_lab(to_lab(image)).astype(int) - image).max() <= 1


def test_reinhard_moves_lab_statistics_to_the_target():
    source = _smooth(5, (64, 64))
    source = (source * 0.5 + np.array([120, 60, 20])).astype(np.uint8)  # warm, low contrast
    target = lab_stats([_smooth(6, (64, 64)) // 2 + np.array([30, 60, 110], np.uint8)])  # cool
    moved = lab_stats([reinhard(source, target)])
    before = lab_stats([source])
    for channel in range(3):
        assert moved.mean[channel] == pytest.approx(target.mean[channel], abs=1.0)
        assert moved.std[channel] == pytest.approx(target.std[channel], rel=0.1, abs=0.5)
        assert abs(before.mean[channel] - target.mean[channel]) > 5 or channel == 0


def test_reinhard_leaves_a_flat_channel_flat_instead_of_dividing_by_zero():
    flat = np.full((16, 16, 3), 128, np.uint8)
    target = LabStats(mean=(70.0, 0.0, 0.0), std=(10.0, 5.0, 5.0), pixels=1)
    out = reinhard(flat, target)
    assert np.isfinite(out).all() and out.std() < 1.0
    assert to_lab(out)[..., 0].mean() == pytest.approx(70.0, abs=1.0)


def test_reverse_name():
    assert reverse_name("demo-summer2winter") == "demo-winter2summer"
    assert reverse_name("summer2winter_yosemite") == "winter2summer_yosemite"
    assert reverse_name("horse2zebra") == "zebra2horse"
    assert reverse_name("mine") is None


# ---------------------------------------------------------------- the command

@pytest.fixture
def paired(tmp_path):
    """X images, their 'truth' (a colour-shifted copy) and target-domain training images."""
    folders = {name: tmp_path / name for name in ("x", "truth", "ytrain")}
    for folder in folders.values():
        folder.mkdir()
    for i in range(3):
        x = _smooth(10 + i, (32, 40))
        cv2.imwrite(str(folders["x"] / f"img{i}.png"), x[..., ::-1])
        truth = np.clip(x.astype(int) + (30, 30, 45), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folders["truth"] / f"img{i}.png"), truth[..., ::-1])
        train = np.clip(_smooth(20 + i, (32, 40)).astype(int) + (30, 30, 45), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folders["ytrain"] / f"train{i}.png"), train[..., ::-1])
    return folders


@pytest.fixture
def model_pair(tiny_model_file, isolated_store):
    models = isolated_store / "models"
    models.mkdir(exist_ok=True)
    for name in ("tiny-summer2winter", "tiny-winter2summer"):
        shutil.copy(tiny_model_file, models / f"{name}.safetensors")
    return "tiny-summer2winter"


def _read(folder):
    return [cv2.imread(str(p))[..., ::-1] for p in sorted(folder.iterdir())]


def test_eval_json_scores_model_and_baselines_on_the_same_images(paired, model_pair):
    result = run_cli("eval", "--model", model_pair, "--x", str(paired["x"]), "--truth",
                     str(paired["truth"]), "--y-train", str(paired["ytrain"]), "--json",
                     "--precision", "fp32")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 3 and set(report["metrics"]) == {"model", "identity", "reinhard"}
    xs, truths = _read(paired["x"]), _read(paired["truth"])
    identity = report["metrics"]["identity"]
    assert identity["psnr"] == pytest.approx(np.mean([psnr(x, t) for x, t in zip(xs, truths)]), abs=1e-6)
    assert identity["ssim"] == pytest.approx(np.mean([ssim(x, t) for x, t in zip(xs, truths)]), abs=1e-6)
    assert identity["delta_e"] == pytest.approx(np.mean([delta_e(x, t) for x, t in zip(xs, truths)]), abs=1e-4)
    # The truth is a global colour shift, which Reinhard (matching training stats) largely recovers.
    assert report["metrics"]["reinhard"]["delta_e"] < identity["delta_e"]
    assert report["margins"]["identity"]["psnr"] == pytest.approx(
        report["metrics"]["model"]["psnr"] - identity["psnr"])
    assert "ytrain" in report["reinhard_stats"]
    assert report["cycle"]["reverse_model"] == "tiny-winter2summer"  # found by its reverse name
    assert 0 < report["cycle"]["psnr"] < 60 and report["cycle"]["l1"] > 0


def test_eval_table_lists_each_method_and_the_cycle(paired, model_pair):
    result = run_cli("eval", "--model", model_pair, "--x", str(paired["x"]), "--truth",
                     str(paired["truth"]))
    assert result.exit_code == 0, result.output
    table = result.stdout
    for word in ("model", "identity", "reinhard", "PSNR dB", "SSIM", "dE76", "cycle F(G(x)) vs x",
                 "model vs reinhard", "oracle"):
        assert word in table


def test_eval_without_truth_reports_the_cycle_error(paired, model_pair):
    result = run_cli("eval", "--model", model_pair, "--x", str(paired["x"]), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["metrics"] == {} and report["truth"] is None
    assert report["cycle"]["reverse_model"] == "tiny-winter2summer"
    assert math.isfinite(report["cycle"]["psnr"]) and 0 <= report["cycle"]["ssim"] <= 1


def test_cycle_error_compares_f_of_g_of_x_with_x(paired, tiny_model_file):
    """With the same file as G and F, the reported cycle PSNR is exactly that of G(G(x)) against x."""
    from vidcycle.runtime.translator import load_model
    report = evaluate(str(tiny_model_file), paired["x"], reverse_model=str(tiny_model_file), precision="fp32")
    g = load_model(str(tiny_model_file), "cpu", "fp32")
    expected = np.mean([psnr(g.translate(g.translate(x)), x) for x in _read(paired["x"])])
    assert report.cycle.psnr == pytest.approx(expected, abs=1e-6)


def test_eval_without_truth_or_reverse_model_says_what_to_pass(paired, tiny_model_file):
    result = run_cli("eval", "--model", str(tiny_model_file), "--x", str(paired["x"]))
    assert result.exit_code == 5
    assert "--reverse-model" in result.output


def test_eval_names_unmatched_files_and_fails_when_nothing_pairs(paired, model_pair, tmp_path):
    cv2.imwrite(str(paired["x"] / "extra.png"), np.zeros((32, 40, 3), np.uint8))
    result = run_cli("eval", "--model", model_pair, "--x", str(paired["x"]), "--truth",
                     str(paired["truth"]), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["unmatched"] == ["extra.png"]
    assert "extra.png" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "nope.png"), np.zeros((32, 40, 3), np.uint8))
    result = run_cli("eval", "--model", model_pair, "--x", str(paired["x"]), "--truth", str(other))
    assert result.exit_code == 4 and "same file names" in result.output


def test_eval_refuses_pairs_of_different_sizes(paired, model_pair):
    cv2.imwrite(str(paired["truth"] / "img0.png"), np.zeros((16, 16, 3), np.uint8))
    result = run_cli("eval", "--model", model_pair, "--x", str(paired["x"]), "--truth",
                     str(paired["truth"]))
    assert result.exit_code == 4 and "img0.png" in result.output and "aligned" in result.output


def test_reverse_model_of_a_file_is_the_reverse_named_file_beside_it(paired, tiny_model_file, tmp_path):
    from vidcycle.quality.evaluation import default_reverse_model
    folder = tmp_path / "models"
    folder.mkdir()
    forward = folder / "cats2dogs.safetensors"
    shutil.copy(tiny_model_file, forward)
    assert default_reverse_model(str(forward)) is None
    shutil.copy(tiny_model_file, folder / "dogs2cats.safetensors")
    assert default_reverse_model(str(forward)) == str(folder / "dogs2cats.safetensors")
    result = run_cli("eval", "--model", str(forward), "--x", str(paired["x"]), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cycle"]["reverse_model"].endswith("dogs2cats.safetensors")
