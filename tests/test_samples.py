"""samples/make_samples.py: deterministic, paired, unpaired by default, and its clips carry sound."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "samples" / "make_samples.py"


@pytest.fixture(scope="module")
def samples():
    spec = importlib.util.spec_from_file_location("make_samples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_seed_same_pixels(samples):
    first = samples.render_photo(3, "winter", (64, 36))
    again = samples.render_photo(3, "winter", (64, 36))
    other = samples.render_photo(4, "winter", (64, 36))
    assert first.shape == (36, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_seasons_of_one_seed_share_their_layout(samples):
    summer = samples.render_photo(5, "summer", (96, 54)).astype(np.float32)
    winter = samples.render_photo(5, "winter", (96, 54)).astype(np.float32)
    other_winter = samples.render_photo(6, "winter", (96, 54)).astype(np.float32)

    def edges(image):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)).ravel()

    paired = np.corrcoef(edges(summer), edges(winter))[0, 1]
    unpaired = np.corrcoef(edges(summer), edges(other_winter))[0, 1]
    assert paired > unpaired + 0.15
    # Winter is the snowy one: brighter and less saturated on the ground than summer.
    assert winter[36:].mean() > summer[36:].mean() + 40
    saturation = lambda im: cv2.cvtColor(im.astype(np.uint8), cv2.COLOR_RGB2HSV)[..., 1].mean()
    assert saturation(winter) < saturation(summer) - 30


def test_cli_paired_names_match_unpaired_seeds_are_disjoint(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True)
    run("--out", str(tmp_path / "paired"), "--photos", "3", "--seed", "10", "--size", "32x24", "--paired")
    run("--out", str(tmp_path / "train"), "--photos", "3", "--seed", "10", "--size", "32x24")
    names = lambda folder: sorted(p.name for p in folder.iterdir())
    assert names(tmp_path / "paired" / "summer") == names(tmp_path / "paired" / "winter")
    assert len(names(tmp_path / "paired" / "summer")) == 3
    assert not set(names(tmp_path / "train" / "summer")) & set(names(tmp_path / "train" / "winter"))


def test_cli_rejects_odd_sizes_and_empty_requests(tmp_path):
    odd = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--photos", "1", "--size", "33x24"],
                         capture_output=True, text=True)
    assert odd.returncode == 2 and "even" in odd.stderr
    empty = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 2 and "nothing to make" in empty.stderr


def test_clip_has_frames_pan_and_audio(samples, tmp_path):
    written = samples.make_set(tmp_path, photos=0, clips=1, seed=1, size=(48, 32), seconds=0.5, fps=12,
                               paired=True, fmt="png")
    assert [p.suffix for p in written] == [".mp4", ".mp4"]
    with av.open(str(written[0])) as container:
        assert len(container.streams.audio) == 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (32, 48, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 2  # the camera moves


def test_committed_samples_exist_and_play():
    root = SCRIPT.parent
    for season in ("summer", "winter"):
        with av.open(str(root / f"{season}_clip.mp4")) as container:
            assert container.streams.video[0].frames >= 48
            assert container.streams.audio[0].codec_context.name == "aac"
        assert len(list((root / "photos").glob(f"{season}_*.jpg"))) >= 3


# ---------------------------------------------------------------- the built-in demo models

DEMO = ("demo-summer2winter", "demo-winter2summer")


def test_demo_models_are_listed_with_no_store_set_up(isolated_store):
    import json

    from conftest import run_cli
    result = run_cli("models", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {m["name"]: m for m in json.loads(result.stdout)}
    assert not (isolated_store / "models").exists()
    for name, (src, dst) in zip(DEMO, (("summer", "winter"), ("winter", "summer"))):
        assert listed[name]["origin"] == "built-in"
        assert (listed[name]["from"], listed[name]["to"]) == (src, dst)
        assert Path(listed[name]["path"]).stat().st_size < 3 * 1024 * 1024


def test_demo_models_are_students_of_the_demo_teacher_made_as_make_demo_models_says():
    """winter -> summer with the default distill recipe; summer -> winter with recipes/demo-student-s2w.toml,
    the default's three changes (samples/make_demo_models.sh), which its file's header shows."""
    from dataclasses import replace

    from conftest import run_cli
    from vidcycle.models.modelfile import read_info
    from vidcycle.models.store import resolve_model_path
    from vidcycle.training.distillation import default_recipe
    from vidcycle.training.recipe import DistillRecipe, load_recipe, recipe_from_dict, shipped_recipes
    result = run_cli("models", "info", "demo-summer2winter")
    assert result.exit_code == 0, result.output
    assert "demo-teacher" in result.stdout and "stability = 7.5" in result.stdout
    default = default_recipe()
    longer = load_recipe(shipped_recipes()["demo-student-s2w"], kind=DistillRecipe)
    assert replace(longer, name=default.name) == replace(  # the default, longer and steadier
        default, schedule=replace(default.schedule, iterations=2000, iterations_decay=2000),
        loss=replace(default.loss, stability=7.5))
    for name, teacher, recipe in zip(DEMO, ("demo-teacher", "demo-teacher-reverse"), (longer, default)):
        info = read_info(resolve_model_path(name))
        assert info.teacher["name"] == teacher and info.fidelity["held_out"]
        made_with = recipe_from_dict(info.recipe, kind=DistillRecipe)
        assert replace(made_with, name=recipe.name) == recipe  # the shipped file was made by --set, so named distill
        assert info.gmacs <= 2.5  # README's first command stays fast


def test_demo_model_turns_an_unseen_summer_photo_wintry(samples):
    from vidcycle.metrics import delta_e, psnr
    from vidcycle.runtime.translator import load_model
    summer = samples.render_photo(987_654, "summer", (160, 96))
    winter = samples.render_photo(987_654, "winter", (160, 96))
    fake = load_model("demo-summer2winter", "cpu", "fp32").translate(summer)
    assert psnr(fake, winter) > psnr(summer, winter) + 5
    assert delta_e(fake, winter) < delta_e(summer, winter) / 2
    back = load_model("demo-winter2summer", "cpu", "fp32").translate(fake)
    assert psnr(back, summer) > psnr(fake, summer) + 5  # and the reverse model brings summer back
