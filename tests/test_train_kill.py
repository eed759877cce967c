"""SIGKILL mid-training, then --resume: the counter, the lr schedule and the weights carry on from the
last checkpoint, exactly as if the run had never stopped."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import kill_once_logged, write_noisy_images
from vidcycle.training.run_folder import CHECKPOINT, load_checkpoint

FLAGS = ["--recipe", "tiny", "--workers", "0", "--precision", "fp32", "--no-export",
         "--set", "schedule.checkpoint_every=5", "--set", "schedule.log_every=1",
         "--set", "schedule.iterations=8", "--set", "schedule.iterations_decay=200"]


def write_images(folder, count, colour, seed):
    return write_noisy_images(folder, count, colour, seed=seed, spread=40, size=(44, 36))


def vidcycle(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "vidcycle", *map(str, args)], env


# CycleGAN's four networks; CUT's generator, discriminator and projection head (whose patch sampling
# draws on the RNGs the checkpoint keeps).
METHODS = {"cyclegan": ([], ("g_xy", "g_yx", "d_x", "d_y")),
           "cut": (["--set", "method=cut", "--set", "nce.layers=0,4,7,10"], ("g_xy", "d_y", "head"))}


@pytest.mark.parametrize("method", METHODS)
def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path, method):
    flags, nets = FLAGS + METHODS[method][0], METHODS[method][1]
    x = write_images(tmp_path / "x", 6, (200, 80, 40), 0)
    y = write_images(tmp_path / "y", 6, (40, 80, 200), 1)
    run = tmp_path / "run"
    command, env = vidcycle("train", "--x", x, "--y", y, *flags, "--max-steps", 200, "--out", run)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run / "losses.jsonl"
    kill_once_logged(process, log, 13)

    killed_at = len(log.read_text().splitlines())
    saved = load_checkpoint(run / CHECKPOINT)  # never a half-written file
    k = saved["iteration"]
    assert k % 5 == 0 and 10 <= k <= killed_at

    command, env = vidcycle("train", "--resume", run, "--max-steps", k + 3, "--workers", "0", "--no-export")
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"continuing: iteration {k} of " in resumed.stderr
    assert not list(run.glob(".*.part"))
    final = load_checkpoint(run / CHECKPOINT)
    assert final["iteration"] == k + 3
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(1, k + 4))  # lines past the checkpoint redone
    for row in rows:  # lr of the row's last step: 2e-4 * (1 - max(0, step + 1 - 8) / 201), step = iteration - 1
        assert abs(row["lr"] - 2e-4 * (1 - max(0, row["iteration"] - 8) / 201)) < 1e-12

    # The same k + 3 iterations without interruption give bit-identical networks, in a process like
    # the others (one thread: oneDNN's and BLAS's reductions are ordered by thread).
    command, env = vidcycle("train", "--x", x, "--y", y, *flags, "--max-steps", k + 3, "--out", tmp_path / "straight")
    straight = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    assert set(final["nets"]) == set(nets)
    for net in nets:
        for key, value in reference["nets"][net].items():
            assert torch.equal(value, final["nets"][net][key]), (net, key)
