"""What vidcycle writes (readable by others, as any tool's files) and how it finds its inputs."""

import os
import stat

import numpy as np
import pytest

from conftest import run_cli as run
from conftest import write_clip, write_noisy_images
from vidcycle.errors import UsageError


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root):
    """{relative path: permission bits} of every file and folder under root."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def test_every_file_written_under_umask_022_is_0644(tmp_path, isolated_store, tiny_model_file, umask_022):
    photos = write_noisy_images(tmp_path / "in" / "photos", 1, (200, 120, 60))
    write_clip(tmp_path / "in" / "clip.mp4", frames=6, audio=True)
    x = write_noisy_images(tmp_path / "x", 4, (200, 80, 40))
    write_clip(x / "footage.mp4", frames=6, size=(48, 40))
    y = write_noisy_images(tmp_path / "y", 4, (40, 80, 200), seed=1)
    out = tmp_path / "out"
    assert run("apply", tmp_path / "in", "-m", tiny_model_file, "-o", out).exit_code == 0
    trained = run("train", "--x", x, "--y", y, "--name", "warm2cold", "--recipe", "tiny", "--workers", 0,
                  "--precision", "fp32", "--max-steps", 2, "--set", "schedule.log_every=1", "--out", tmp_path / "run",
                  "--cache-dir", tmp_path / "cache")
    assert trained.exit_code == 0, trained.output
    assert run("models", "export", tmp_path / "run", "--name", "hot2icy").exit_code == 0
    written = {"outputs": modes(out), "run": modes(tmp_path / "run"), "cache": modes(tmp_path / "cache"),
               "store": modes(isolated_store / "models")}
    assert {"photos/img0.png", "clip.mp4"} <= set(written["outputs"])
    assert {"checkpoint.pt", "run.json", "recipe.toml", "losses.jsonl", "loss_curves.png"} <= set(written["run"])
    assert any(name.endswith(".jpg") for name in written["cache"])
    assert {"warm2cold.safetensors", "cold2warm.safetensors", "hot2icy.safetensors"} <= set(written["store"])
    for place, found in written.items():
        for name, mode in found.items():
            is_dir = os.path.isdir({"outputs": out, "run": tmp_path / "run", "cache": tmp_path / "cache",
                                    "store": isolated_store / "models"}[place] / name)
            assert mode == (0o755 if is_dir else 0o644), (place, name, oct(mode))
    assert photos.is_dir()


def test_hidden_files_are_skipped_links_followed_and_loops_walked_once(tmp_path, tiny_model_file):
    from vidcycle.training.framecache import collect_media
    root = tmp_path / "photos"
    write_noisy_images(root / "a", 1, (90, 90, 90))
    write_noisy_images(tmp_path / "elsewhere", 1, (10, 200, 10))
    (root / "a" / ".hidden.png").write_bytes((root / "a" / "img0.png").read_bytes())
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    expected = {"a/img0.png", "linked/img0.png"}
    assert {str(p.relative_to(root)) for p in collect_media([root])} == expected
    result = run("apply", root, "-m", tiny_model_file, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == sorted(str(tmp_path / "out" / name) for name in expected)


def test_an_unwritable_frame_cache_is_a_usage_error(tmp_path):
    x = write_noisy_images(tmp_path / "x", 2, (200, 80, 40))
    write_clip(x / "clip.mp4", frames=4)
    y = write_noisy_images(tmp_path / "y", 2, (40, 80, 200))
    (tmp_path / "a_file").write_text("not a folder")
    result = run("train", "--x", x, "--y", y, "--recipe", "tiny", "--workers", 0, "--max-steps", 1,
                 "--out", tmp_path / "run", "--cache-dir", tmp_path / "a_file" / "cache", "--no-export")
    assert result.exit_code == UsageError.exit_code == 2
    assert "frame cache" in result.output and "--cache-dir" in result.output
    assert "Traceback" not in result.output


def test_blender_settings_out_of_range_are_usage_errors():
    from vidcycle.apply.temporal import TemporalBlender
    from vidcycle.media.motion import FlowEstimator
    with pytest.raises(UsageError, match="temporal strength"):
        TemporalBlender(1.5)
    with pytest.raises(UsageError, match="flow preset"):
        FlowEstimator("slowest")


def test_a_killed_write_leaves_only_a_hidden_temporary_that_the_next_write_removes(tmp_path):
    from vidcycle.files import atomic_path, remove_partials, write_atomic
    target = tmp_path / "picture.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    leftover = tmp_path / ".picture.dead.partial.png"  # what SIGKILL would leave
    leftover.write_bytes(b"half")
    remove_partials(target)
    write_atomic(target, np.arange(4, dtype=np.uint8).tobytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]
