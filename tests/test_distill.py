"""`vidcycle distill`: a cheaper student learns its teacher's output, says what it is, and works wherever a
model does; bad inputs stop before anything is written."""

import json

import numpy as np
import pytest
import torch

import vidcycle
from conftest import kill_once_logged, write_clip
from conftest import run_cli as run
from vidcycle.models.modelfile import read_info
from vidcycle.models.nets import GeneratorSpec, build_generator, count_gmacs
from vidcycle.models.store import models_dir
from vidcycle.runtime.translator import Translator, load_model
from vidcycle.training.distillation import DistillOptions
from vidcycle.training.recipe import DistillRecipe, load_recipe, shipped_recipes

TINY = ["--recipe", "distill-tiny", "--workers", "0", "--precision", "fp32"]


def tiny_recipe(**overrides) -> DistillRecipe:
    return load_recipe(shipped_recipes()["distill-tiny"], overrides, kind=DistillRecipe)


def write_smooth_images(folder, count, seed, size=(48, 40)):
    """PNG photos of smooth random colour fields (low-resolution noise, enlarged bicubically)."""
    import cv2
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.resize(small, size, interpolation=cv2.INTER_CUBIC))
    return folder


def read_frames(folder):
    import cv2
    return np.stack([cv2.imread(str(path))[..., ::-1] for path in sorted(folder.iterdir())])


@pytest.fixture
def data(tmp_path):
    return write_smooth_images(tmp_path / "summer", 12, seed=3)


def test_distillation_brings_the_student_far_closer_to_its_teacher(data, tmp_path):
    teacher = "demo-summer2winter"  # a trained model (built in): something a student can learn
    result = vidcycle.distill(teacher, DistillOptions(data=[data], name="fast", workers=0, precision="fp32"),
                              tiny_recipe())
    assert result.iteration == result.total_iterations == 60 and result.fidelity["frames"] == 2
    frames = read_frames(write_smooth_images(tmp_path / "unseen", 3, seed=9, size=(52, 44)))
    target = load_model(teacher, "cpu", "fp32").translate_batch(frames).astype(float)
    student = load_model("fast", "cpu", "fp32").translate_batch(frames).astype(float)
    torch.manual_seed(0)
    untrained = Translator(build_generator(result.stored.info.spec), result.stored.info, "cpu", "fp32")
    untrained_error = np.abs(untrained.translate_batch(frames).astype(float) - target).mean()
    assert np.abs(student - target).mean() < 0.4 * untrained_error


def test_a_student_file_says_what_it_is_and_loads_by_name_and_by_path(tiny_model_file, data, tmp_path):
    result = run("distill", tiny_model_file, "--data", data, "--name", "fast", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "fast"
    path = models_dir() / "fast.safetensors"
    info = json.loads(run("models", "info", "fast", "--json").stdout)
    teacher = read_info(tiny_model_file)
    assert info["teacher"] == {"name": "tiny", "content_hash": teacher.content_hash}
    assert set(info["fidelity"]) >= {"psnr", "ssim", "frames"} and info["fidelity"]["held_out"]
    assert info["gmacs_256"] == pytest.approx(count_gmacs(GeneratorSpec(1, 4)), rel=1e-3)
    assert info["gmacs_256"] < teacher.gmacs and (info["from"], info["to"]) == ("summer", "winter")
    frame = np.random.default_rng(0).integers(0, 255, (30, 46, 3), dtype=np.uint8)
    by_name, by_path = load_model("fast", "cpu", "fp32"), load_model(path, "cpu", "fp32")
    assert np.array_equal(by_name.translate(frame), by_path.translate(frame))
    assert by_name.translate(frame).shape == frame.shape
    for name in ("recipe.toml", "run.json", "checkpoint.pt", "losses.jsonl", "loss_curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "iter_000000.png", "iter_000020.png", "iter_000040.png", "iter_000060.png"]


def test_models_list_and_info_count_the_cost_of_every_model(tiny_model_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    listing = run("models", "list")
    assert "GMAC/256" in listing.stdout.splitlines()[0]
    assert "2.42" in listing.stdout  # the built-in demo models, 6 blocks ngf 16
    demo = json.loads(run("models", "info", "demo-summer2winter", "--json").stdout)
    assert demo["gmacs_256"] == pytest.approx(2.422, abs=1e-3)
    # a file saved before the header had the field is counted from its architecture
    with safe_open(demo["path"], "pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "gmacs_256"}
    older = tmp_path / "older-summer2winter.safetensors"
    save_file(load_file(demo["path"]), older, metadata=metadata)
    assert json.loads(run("models", "info", older, "--json").stdout)["gmacs_256"] == pytest.approx(2.422, abs=1e-3)
    rows = json.loads(run("models", "list", "--json").stdout)
    assert all(row["gmacs_256"] > 0 for row in rows)


def test_apply_runs_a_student_on_a_clip_and_a_photo(tiny_model_file, data, tmp_path):
    assert run("distill", tiny_model_file, "--data", data, "--name", "fast", *TINY, "--max-steps", 5,
               "--out", tmp_path / "run").exit_code == 0
    clip = write_clip(tmp_path / "clip.mp4", frames=8, size=(64, 48))
    photo = tmp_path / "photo.png"
    __import__("cv2").imwrite(str(photo), np.full((36, 50, 3), 120, np.uint8))
    result = run("apply", clip, photo, "--model", "fast", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "clip.mp4").is_file() and (tmp_path / "out" / "photo.png").is_file()


def test_a_mobile_student_has_the_generator_contract_and_a_version_2_file(tiny_model_file, data, tmp_path):
    result = run("distill", tiny_model_file, "--data", data, "--name", "mobile", *TINY, "--max-steps", 5,
                 "--set", "student.kind=mobile", "--set", "student.ngf=8", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    model = load_model("mobile", "cpu", "fp32")
    assert model.info.architecture == "mobile resnet 1 blocks, ngf 8"
    assert __import__("safetensors").safe_open(str(models_dir() / "mobile.safetensors"), "pt"
                                                ).metadata()["format_version"] == "2"
    for height, width in ((31, 47), (5, 3), (64, 64)):
        assert model.translate(np.zeros((height, width, 3), np.uint8)).shape == (height, width, 3)


# ---------------------------------------------------------------- bad input: one line, its exit code, nothing written

def assert_refused(result, code: int, words: str, tmp_path):
    assert result.exit_code == code, result.output
    lines = [line.split("\r")[-1] for line in result.stderr.split("\n")]  # as a terminal shows progress bars
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vidcycle: error:") and words in lines[0], lines
    assert not (tmp_path / "run").exists() and not list(models_dir().glob("*"))


def test_unknown_teacher_exits_5(data, tmp_path):
    result = run("distill", "no-such-model", "--data", data, "--name", "fast", *TINY, "--out", tmp_path / "run")
    assert_refused(result, 5, "unknown model 'no-such-model'", tmp_path)


def test_data_without_usable_frames_exits_4(tiny_model_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.mp4").write_bytes(b"not a video")
    result = run("distill", tiny_model_file, "--data", empty, "--name", "fast", *TINY, "--out", tmp_path / "run")
    assert_refused(result, 4, "no usable frames", tmp_path)


def test_a_student_as_big_as_its_teacher_is_refused_with_the_reason(tiny_model_file, data, tmp_path):
    result = run("distill", tiny_model_file, "--data", data, "--name", "fast", *TINY, "--out", tmp_path / "run",
                 "--set", "student.n_blocks=2", "--set", "student.ngf=8")
    assert_refused(result, 3, "no less than its teacher", tmp_path)


# ---------------------------------------------------------------- exact resume after SIGKILL

KILL_FLAGS = [*TINY, "--set", "loss.stability=1", "--set", "schedule.checkpoint_every=5", "--set", "schedule.log_every=1",
              "--set", "schedule.iterations=8", "--set", "schedule.iterations_decay=200", "--no-export"]


def test_sigkill_then_resume_continues_exactly(tiny_model_file, data, tmp_path):
    import os
    import subprocess
    import sys

    from vidcycle.training.distillation import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    from vidcycle.training.run_folder import CHECKPOINT, load_checkpoint

    def command(*args):
        return [sys.executable, "-m", "vidcycle", "distill", *map(str, args)], dict(os.environ, OMP_NUM_THREADS="1")

    run_dir = tmp_path / "run"
    argv, env = command(tiny_model_file, "--data", data, "--name", "fast", *KILL_FLAGS, "--max-steps", 200,
                        "--out", run_dir)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run_dir / "losses.jsonl"
    kill_once_logged(process, log, 13)

    def checkpoint():
        return load_checkpoint(run_dir / CHECKPOINT, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "distillation")

    k = checkpoint()["iteration"]
    assert k % 5 == 0 and k >= 10
    argv, env = command("--resume", run_dir, "--max-steps", k + 3, "--workers", "0", "--no-export")
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"continuing: iteration {k} of " in resumed.stderr
    final = checkpoint()
    assert final["iteration"] == k + 3
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(1, k + 4))

    # The same k + 3 iterations without interruption give a bit-identical student (one thread, as above):
    # the stability term's motions continue where they were.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = run("distill", tiny_model_file, "--data", data, "--name", "fast", *KILL_FLAGS,
                       "--max-steps", k + 3, "--out", tmp_path / "straight")
    finally:
        torch.set_num_threads(threads)
    assert straight.exit_code == 0, straight.output
    reference = load_checkpoint(tmp_path / "straight" / CHECKPOINT, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    for key, value in reference["student"].items():
        assert torch.equal(value, final["student"][key]), key


def test_the_ssim_loss_is_evals_ssim_and_stays_float32_under_autocast():
    import cv2

    from vidcycle.metrics import ssim as eval_ssim
    from vidcycle.training.losses import ssim
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    b = cv2.GaussianBlur(np.clip(a + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8), (5, 5), 1)
    batch = [torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1 for image in (a, b)]
    assert ssim(*batch).item() == pytest.approx(eval_ssim(a, b), abs=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 blurs made variances negative: SSIM went to -inf
        assert ssim(*(x.bfloat16() for x in batch)).item() == pytest.approx(eval_ssim(a, b), abs=1e-2)


# ---------------------------------------------------------------- the stability term (Eilertsen et al. 2019)

def test_the_stability_term_is_zero_for_a_net_that_moves_with_the_picture_and_not_for_a_fixed_pattern():
    from vidcycle.training.students import stability_loss

    x = torch.rand(3, 3, 48, 48) * 2 - 1
    pointwise = torch.nn.Conv2d(3, 3, 1)  # commutes with any resampling: a steady output

    class FixedPattern(torch.nn.Module):  # a texture stuck to the frame: it shimmers when the camera moves
        def forward(self, images):
            checker = (torch.arange(48)[:, None] + torch.arange(48)[None]) % 2 * 2 - 1.0
            return images + 0.5 * checker

    with torch.no_grad():
        steady = stability_loss(pointwise, x, pointwise(x), torch.Generator().manual_seed(0))
        shimmering = stability_loss(FixedPattern(), x, FixedPattern()(x), torch.Generator().manual_seed(0))
    assert float(steady) < 1e-5
    assert float(shimmering) > 0.1


def test_the_motions_are_small_camera_moves_that_stay_inside_the_margin():
    from vidcycle.training.losses import random_motions
    from vidcycle.training.recipe import MOTION_MARGIN

    grids = random_motions(256, 128, 128, torch.Generator().manual_seed(0))
    again = random_motions(256, 128, 128, torch.Generator().manual_seed(0))
    assert torch.equal(grids, again)
    identity = torch.nn.functional.affine_grid(torch.eye(2, 3)[None], [1, 1, 128, 128], align_corners=False)
    moved_px = (grids - identity).abs() * 64  # normalised [-1, 1] -> pixels of a 128-px crop
    assert float(moved_px.max()) < MOTION_MARGIN - 1
    per_crop = moved_px.mean(dim=(1, 2, 3))
    assert float(per_crop.mean()) > 0.5 and float(per_crop.min()) < float(per_crop.max()) / 4


def test_the_stability_term_makes_a_steadier_student(data):
    from vidcycle.training.students import stability_loss

    def steadiness(weight):
        name = f"fast{weight:g}"
        vidcycle.distill("demo-summer2winter", DistillOptions(data=[data], name=name, workers=0, precision="fp32"),
                         tiny_recipe(**{"loss.stability": weight}))
        student = load_model(name, "cpu", "fp32").generator
        frames = torch.from_numpy(read_frames(data)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            return float(stability_loss(student, frames, student(frames), torch.Generator().manual_seed(5)))

    assert steadiness(10.0) < 0.8 * steadiness(0.0)  # measured: 0.019 against 0.035


def test_every_shipped_distill_recipe_loads_and_the_default_keeps_the_student_steady():
    from vidcycle.training.distillation import default_recipe
    for name in ("distill", "distill-tiny"):
        assert load_recipe(shipped_recipes()[name], kind=DistillRecipe).name == name
    assert default_recipe().loss.stability == 5.0


def test_stability_on_crops_too_small_for_its_margin_is_refused(tiny_model_file, data, tmp_path):
    result = run("distill", tiny_model_file, "--data", data, "--name", "fast", *TINY, "--out", tmp_path / "run",
                 "--set", "loss.stability=1", "--set", "data.crop_size=24", "--set", "data.load_size=24")
    assert_refused(result, 3, "loss.stability leaves 8 px out", tmp_path)


def test_distill_under_a_time_budget_plans_and_exports_the_averaged_student_when_it_measures_better(
        tiny_model_file, data, tmp_path):
    from vidcycle.models.store import load_generator, stored_path
    result = run("distill", tiny_model_file, "--data", data, "--name", "fast", *TINY, "--time", "10m",
                 "--max-steps", 12, "--set", "optim.ema_halflife=2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "planned 12 iterations in 10 min: 6 constant, 6 decay (--max-steps 12 binds first" in result.stderr
    _, info = load_generator(stored_path("fast"))
    # whichever weights it carries, the header says which, and its fidelity is of those weights
    assert info.weights == "last" or info.weights.startswith("average (half-life 2")
    assert "time:" in result.stderr


def test_a_resumed_distillation_says_how_far_it_had_got(tiny_model_file, data, tmp_path):
    first = run("distill", tiny_model_file, "--data", data, "--name", "fast", *TINY, "--no-export",
                    "--set", "schedule.checkpoint_every=2", "--max-steps", 2, "--out", tmp_path / "run")
    assert first.exit_code == 0, first.output
    assert "continuing" not in first.stderr
    again = run("distill", "--resume", tmp_path / "run", "--max-steps", 3, "--workers", "0", "--no-export")
    assert again.exit_code == 0, again.output
    said = [line for line in again.stderr.splitlines() if "continuing" in line]
    assert len(said) == 1 and said[0].startswith("vidcycle: continuing: iteration 2 of ") and "already done" in said[0]
