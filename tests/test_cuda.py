"""The GPU paths on the real device: the counterparts of what tests/test_gpu_paths.py decides with stubbed
CUDA queries, and of the CPU tests of precision, memory plans and tiles. Marked cuda: skipped without a GPU
(conftest.py), run on one by `pytest -m cuda` (benchmarks/gpu_check.py's first stage)."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vidcycle
from conftest import landscapes, run_cli, write_noisy_images
from test_gpu_paths import OverflowsInHalf
from test_translator import BF16_MIN_PSNR_DB, FP16_MIN_PSNR_DB
from vidcycle.metrics import psnr
from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.nets import GeneratorSpec, build_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory_cap import capped_gpu_memory  # noqa: E402

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)
MIN_PSNR_DB = {"fp16": FP16_MIN_PSNR_DB, "bf16": BF16_MIN_PSNR_DB}


def translator(precision="fp16", max_memory=None, n_blocks=1, ngf=8, device="cuda", generator=None):
    """A Translator of a random-weight generator (the same weights every call)."""
    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=n_blocks, ngf=ngf)
    return vidcycle.Translator(generator or build_generator(spec), ModelInfo(spec=spec), device, precision,
                               max_memory=max_memory)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("n_blocks, ngf", [(9, 64), (6, 16)], ids=["9-block-ngf64", "student-6-block-ngf16"])
def test_reduced_precision_on_the_gpu_stays_close_to_fp32_on_the_cpu(precision, n_blocks, ngf):
    frames = landscapes(2, 256, 256)
    fast = translator(precision, n_blocks=n_blocks, ngf=ngf)
    exact = translator("fp32", n_blocks=n_blocks, ngf=ngf, device="cpu")
    reference = exact.translate_batch(frames)
    assert reference.std() > 10  # the comparison means something only if the output varies
    assert psnr(fast.translate_batch(frames), reference) >= MIN_PSNR_DB[precision]
    assert fast.precision == precision  # no fallback: it ran in that precision


def test_the_default_budget_is_a_share_of_free_memory_and_the_planned_batch_fits_it():
    free, _ = torch.cuda.mem_get_info(CUDA)
    model = translator("fp16", ngf=64)
    assert abs(model.budget - 0.8 * free) <= 0.05 * free
    chosen = model.plan(1080, 1920)
    assert chosen.tile is None and 1 <= chosen.batch <= model.index_cap(1080, 1920)
    frames = torch.from_numpy(landscapes(chosen.batch, 1080, 1920))
    torch.cuda.reset_peak_memory_stats(CUDA)
    model.translate_tensor(frames)
    assert torch.cuda.max_memory_allocated(CUDA) <= model.budget


def test_under_a_set_budget_memory_sets_the_batch_and_the_run_stays_within_it():
    model = translator("fp16", max_memory="2G", ngf=64)
    chosen = model.plan(1080, 1920)
    assert chosen.tile is None and 1 <= chosen.batch < model.index_cap(1080, 1920)  # memory, not the index cap
    assert 0 < chosen.estimate <= model.budget
    frames = torch.from_numpy(landscapes(chosen.batch, 1080, 1920))
    torch.cuda.synchronize(CUDA)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    model.translate_tensor(frames)
    assert torch.cuda.max_memory_allocated(CUDA) <= model.budget


def test_running_out_of_gpu_memory_for_real_halves_the_batch_then_tiles_and_gives_the_same_frames(caplog):
    frames = landscapes(4, 2048, 2048)
    expected = translator("fp16", ngf=32).translate_batch(frames)
    capped = translator("fp16", ngf=32)  # a whole frame needs about 0.9 GiB, tiles about half of that
    assert capped.plan(2048, 2048).batch > 4  # planned from mem_get_info, which knows nothing of the cap
    with capped_gpu_memory(640 * 2 ** 20), caplog.at_level(logging.WARNING, logger="vidcycle"):
        result = capped.translate_batch(frames)
    assert any("out of memory at" in line for line in caplog.messages)  # the batch was halved...
    assert any("tiles" in line for line in caplog.messages)  # ...then tiles
    assert capped.plan(2048, 2048).tile is not None
    assert psnr(result, expected) >= 40


@pytest.mark.parametrize("precision, budget", [("fp32", "24M"), ("fp16", "12M")])
def test_tiles_on_the_gpu_match_whole_frames(precision, budget):
    frames = landscapes(2, 512, 512)
    tiled = translator(precision, max_memory=budget)
    assert tiled.plan(512, 512).tile is not None  # the budget forces tiles
    assert psnr(tiled.translate_batch(frames), translator(precision).translate_batch(frames)) >= 40


def test_a_short_batch_is_padded_to_the_planned_size_and_gives_the_same_frames():
    model = translator("fp16")
    planned = model.plan(64, 64).batch
    assert planned > 3 and model.pad_batches
    calls = []
    model.generator.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    frames = landscapes(3, 64, 64)
    batch = model.translate_batch(frames)
    assert calls == [planned]  # run at the planned batch, the extra frames dropped
    for frame, out in zip(frames, batch):
        assert np.abs(model.translate(frame).astype(int) - out.astype(int)).max() <= 1


def test_an_fp16_overflow_on_the_gpu_falls_back_with_a_warning(caplog):
    model = translator("fp16", generator=OverflowsInHalf())
    frames = landscapes(2, 32, 32)
    with caplog.at_level(logging.WARNING, logger="vidcycle"):
        result = model.translate_batch(frames)
    native_bf16 = torch.cuda.get_device_capability(CUDA) >= (8, 0)
    assert model.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert any("fp16 overflowed" in line for line in caplog.messages)
    expected = translator("fp32", generator=OverflowsInHalf(), device="cpu").translate_batch(frames)
    assert psnr(result, expected) >= BF16_MIN_PSNR_DB


def test_training_precision_and_rng_state_on_the_real_device():
    from vidcycle.runtime.device import pick_training_precision
    from vidcycle.training.run_folder import rng_state, set_rng_state
    native_bf16 = torch.cuda.get_device_capability(CUDA) >= (8, 0)
    assert pick_training_precision("auto", CUDA) == (torch.bfloat16 if native_bf16 else torch.float16)
    saved = rng_state(CUDA)
    drawn = torch.rand(8, device=CUDA), torch.rand(8)
    set_rng_state(saved, CUDA)
    assert torch.equal(torch.rand(8, device=CUDA), drawn[0]) and torch.equal(torch.rand(8), drawn[1])


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_a_few_training_steps_on_the_gpu(tmp_path, precision):
    pytest.importorskip("av")  # training's frame cache imports it; the GPU machine has it only as a carried wheel
    x = write_noisy_images(tmp_path / "x", 6, (200, 80, 40), seed=0)
    y = write_noisy_images(tmp_path / "y", 6, (40, 80, 200), seed=1)
    result = run_cli("train", "--x", x, "--y", y, "--recipe", "tiny", "--max-steps", 3, "--device", "cuda",
                     "--precision", precision, "--workers", 0, "--no-export", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    native_bf16 = torch.cuda.get_device_capability(CUDA) >= (8, 0)
    expected = {"auto": "bf16" if native_bf16 else "fp16", "fp32": "fp32"}[precision]
    assert state["iteration"] == 3 and state["precision"] == expected
