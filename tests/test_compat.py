"""Files written by the last release (tests/data/release-0.1.0) still load, resume and export."""

import json
import shutil
from pathlib import Path

import torch

from conftest import run_cli
from vidcycle.models.store import load_generator
from vidcycle.training.run_folder import load_checkpoint

RELEASE = Path(__file__).parent / "data" / "release-0.1.0"
SAMPLES = Path(__file__).parents[1] / "samples"


def copied_run(name: str, tmp_path: Path, **paths) -> Path:
    """The release's run folder in tmp_path, its record pointed at this checkout's files."""
    run_dir = tmp_path / name
    shutil.copytree(RELEASE / name, run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    record.update(paths, cache_dir=str(tmp_path / "cache"))
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def test_a_training_run_of_the_last_release_resumes_where_it_stopped_and_exports(tmp_path):
    run_dir = copied_run("run", tmp_path, x_inputs=[str(SAMPLES / "summer_clip.mp4")],
                         y_inputs=[str(SAMPLES / "winter_clip.mp4")])
    before = load_checkpoint(run_dir / "checkpoint.pt")
    result = run_cli("train", "--resume", run_dir, "--max-steps", 6, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert "continuing: iteration 4 of " in result.output
    after = load_checkpoint(run_dir / "checkpoint.pt")
    assert after["iteration"] == 6
    assert not torch.equal(after["nets"]["g_xy"]["model.1.weight"], before["nets"]["g_xy"]["model.1.weight"])
    generator, info = load_generator("summer2winter")
    assert (info.from_domain, info.to_domain) == ("summer", "winter")


def test_a_distillation_and_a_model_file_of_the_last_release_load_and_resume(tmp_path):
    teacher = tmp_path / "summer2winter.safetensors"
    shutil.copy(RELEASE / "summer2winter.safetensors", teacher)
    generator, info = load_generator(teacher)
    assert info.spec.ngf == 4 and info.content_hash
    run_dir = copied_run("distill-run", tmp_path, data=[str(SAMPLES / "summer_clip.mp4")], teacher_path=str(teacher))
    result = run_cli("distill", "--resume", run_dir, "--max-steps", 5, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_dir / "checkpoint.pt", "vidcycle-distill-checkpoint")["iteration"] == 5
    student, student_info = load_generator("student")
    assert student_info.teacher["content_hash"] == info.content_hash
