"""Decisions only a GPU machine reaches, exercised on the CPU with stubbed CUDA queries."""

import torch

from vidcycle.runtime.device import pick_training_precision
from vidcycle.runtime.torchrun import TorchrunEnv
from vidcycle.training.distributed import loader_workers
from vidcycle.training.run_folder import rng_state, set_rng_state

CUDA = torch.device("cuda", 0)


def test_auto_training_precision_is_fp16_where_bf16_would_only_be_emulated(monkeypatch):
    capability = {"value": (7, 5)}  # T4: torch.cuda.is_bf16_supported() says True, by emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert pick_training_precision("auto", CUDA) == torch.float16
    capability["value"] = (8, 0)  # A100 and newer: native bf16 convolutions
    assert pick_training_precision("auto", CUDA) == torch.bfloat16
    assert pick_training_precision("fp32", torch.device("cpu")) == torch.float32


def test_rng_state_holds_the_training_gpu_only_and_resumes_where_fewer_are_visible(monkeypatch):
    states = {index: torch.full((16,), index, dtype=torch.uint8) for index in range(4)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states.values()))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.update(
        {torch.device(device).index: state}))
    saved = rng_state(torch.device("cuda", 3))  # rank 3 of a 4-GPU run
    assert torch.equal(saved["cuda"], states[3])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_all(new_states):  # as torch does with more states than visible GPUs
        if len(new_states) > torch.cuda.device_count():
            raise IndexError("list index out of range")
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    set_rng_state(saved, CUDA)  # resumed on a machine showing one GPU
    assert torch.equal(restored[0], states[3])
    older = {**saved, "cuda": list(states.values())}  # a checkpoint of the old format: every visible GPU's
    set_rng_state(older, CUDA)  # not reused, and no IndexError
    assert torch.equal(restored[0], states[3])


def test_loader_workers_are_shared_among_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    eight_ranks = TorchrunEnv(rank=0, world=8, local_rank=0, local_world=8)
    assert loader_workers(None, CUDA, eight_ranks) == 8  # 64 cores / 8 ranks, not 8 x 8
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(None, CUDA, eight_ranks) == 2
    assert loader_workers(None, CUDA, TorchrunEnv()) == 8  # one process keeps at most 8
    assert loader_workers(None, torch.device("cpu"), eight_ranks) == 1
    assert loader_workers(3, CUDA, eight_ranks) == 3  # --workers wins


def test_the_frame_cache_wait_has_its_own_gloo_group_with_a_day_long_timeout(monkeypatch):
    import datetime

    from vidcycle.training.distributed import init_distributed
    groups, barriers = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # NCCL's group: 10-minute default
    monkeypatch.setattr(torch.distributed, "new_group", lambda **kw: groups.append(kw) or "cache group")
    monkeypatch.setattr(torch.distributed, "barrier", lambda group=None: barriers.append(group))
    threads = torch.get_num_threads()
    try:
        dist, _ = init_distributed(torch.device("cpu"))
        dist.wait_for_cache()
    finally:
        torch.set_num_threads(threads)
    assert groups == [{"backend": "gloo", "timeout": groups[0]["timeout"]}]
    assert groups[0]["timeout"] >= datetime.timedelta(hours=24)
    assert barriers == ["cache group"]  # the wait runs on that group, not the default one


def test_torchrun_environment_is_read_once_and_checked(monkeypatch):
    import pytest

    from vidcycle.errors import DeviceError
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert TorchrunEnv.read() == TorchrunEnv(2, 4, 0, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(DeviceError, match="outside WORLD_SIZE"):
        TorchrunEnv.read()


# ---------------------------------------------------------------- the translator's CUDA decisions

import numpy as np  # noqa: E402

from vidcycle.models.modelfile import ModelInfo  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.runtime import translator as translator_module  # noqa: E402
from vidcycle.runtime.translator import Translator, full_resolution_channels, index_cap, index_safe_tile  # noqa: E402
from vidcycle.runtime.memory import Plan  # noqa: E402


def tiny_translator(generator=None):
    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=1, ngf=8)
    net = generator or build_generator(spec)
    return Translator(net, ModelInfo(spec=spec), "cpu", "fp32", max_memory="1G")


def frames(count, height=40, width=48, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (count, height, width, 3), dtype=np.uint8)


class RunsOutAbove(torch.nn.Module):
    """The real generator, but CUDA's allocator fails for batches above `limit` frames or `pixels`."""

    def __init__(self, net, limit=2, pixels=None):
        super().__init__()
        self.model, self.limit, self.pixels, self.calls = net, limit, pixels, []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        too_big = x.shape[0] > self.limit or (self.pixels and x.shape[-1] * x.shape[-2] > self.pixels)
        if too_big and x.device.type != "meta":  # the memory estimate's trace allocates nothing
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_frames(monkeypatch, caplog):
    monkeypatch.setitem(translator_module.CPU_BATCH, torch.float32, 4)  # as CUDA would plan several frames
    expected = tiny_translator().translate_batch(frames(5))
    failing = tiny_translator(RunsOutAbove(build_generator(GeneratorSpec(n_blocks=1, ngf=8), init=False)))
    failing.generator.model.load_state_dict(tiny_translator().generator.state_dict())
    assert failing.plan(40, 48).batch == 4
    result = failing.translate_batch(frames(5))
    assert np.array_equal(result, expected)
    assert failing.plan(40, 48).batch == 2  # remembered for the rest of the clip
    assert any("out of memory at 4 frames" in r.getMessage() and r.name == "vidcycle" for r in caplog.records)
    assert max(shape[0] for shape in failing.generator.calls[1:]) <= 2


def test_a_retry_after_running_out_of_memory_holds_no_failed_batch():
    """The retry runs after the handler: a traceback kept alive would hold every failed attempt's input."""
    import weakref
    failed = []

    class RecordsFailures(RunsOutAbove):
        def forward(self, x):
            if x.shape[0] > self.limit and x.device.type != "meta":
                alive = [ref() is not None for ref in failed]
                failed.append(weakref.ref(x))
                assert not any(alive), "a failed batch is still referenced during the retry"
            return super().forward(x)

    net = RecordsFailures(build_generator(GeneratorSpec(n_blocks=1, ngf=8), init=False), limit=1)
    translator = tiny_translator(net)
    translator._plans[(40, 48)] = Plan(4, None)
    translator.translate_batch(frames(4))
    assert len(failed) == 2 and all(ref() is None for ref in failed)  # 4, then 2, then single frames


def test_out_of_memory_at_one_frame_runs_tiles(caplog):
    net = RunsOutAbove(build_generator(GeneratorSpec(n_blocks=1, ngf=8), init=False), limit=8, pixels=200 * 200)
    failing = tiny_translator(net)
    net.model.load_state_dict(tiny_translator().generator.state_dict())
    frame = frames(1, 256, 256)
    result = failing.translate_batch(frame)
    expected = tiny_translator().translate_batch(frame)
    difference = np.abs(result.astype(int) - expected.astype(int))
    assert difference.mean() < 0.5 and failing.plan(256, 256).tile is not None
    assert any("tiles" in record.getMessage() for record in caplog.records)


def test_cuda_batches_stay_within_32_bit_indexing():
    assert full_resolution_channels(build_generator(GeneratorSpec(n_blocks=9, ngf=64))) == 64
    assert index_cap(64, 1080, 1920) == 15  # 16 frames of 1080p make reflection_pad2d refuse
    assert index_cap(64, 6000, 8000) == 0  # a 48 MP photo: not even one whole frame
    side = index_safe_tile(64)
    assert 64 * (side + 8) ** 2 < 2 ** 31 <= 64 * (side + 16) ** 2


def test_cuda_batch_comes_from_free_memory_and_the_index_cap(monkeypatch):
    from vidcycle.runtime.memory import default_budget
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2 ** 30, 141 * 2 ** 30))
    translator = tiny_translator(build_generator(GeneratorSpec(n_blocks=1, ngf=64)))
    translator.device, translator.dtype = CUDA, torch.float16  # decisions only: nothing runs
    translator.budget = default_budget(CUDA)
    assert translator.budget == int(0.8 * 2 * 2 ** 30)
    chosen = translator.plan(1080, 1920)
    assert 1 <= chosen.batch < 15 and chosen.tile is None
    assert chosen.estimate <= translator.budget
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * 2 ** 30, 141 * 2 ** 30))
    translator.budget, translator._plans = default_budget(CUDA), {}
    assert translator.plan(1080, 1920).batch == 15  # the index cap, not memory, is the limit
    assert translator.plan(6000, 8000).tile <= index_safe_tile(64)


def test_padding_a_short_batch_gives_the_same_frames(monkeypatch):
    monkeypatch.setitem(translator_module.CPU_BATCH, torch.float32, 4)  # as CUDA would plan several frames
    plain, padded = tiny_translator(), tiny_translator()
    padded.pad_batches = True
    calls = []
    padded.generator.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    batch = frames(3)
    assert np.array_equal(padded.translate_batch(batch), plain.translate_batch(batch))
    assert calls == [4]  # run at the planned batch of 4, the extra frame dropped


class OverflowsInHalf(torch.nn.Module):
    """Finite in float32, inf - inf in float16 (its largest value is 65504)."""

    def forward(self, x):
        big = x * 300.0
        return torch.tanh(big * big - big * big + x)


def test_a_non_finite_fp16_output_falls_back_with_a_note(caplog):
    translator = tiny_translator(OverflowsInHalf())
    translator.dtype, translator._checked = torch.float16, False  # as on a GPU in fp16
    result = translator.translate_batch(frames(2))
    assert translator.dtype in (torch.float32, torch.bfloat16)
    assert any("fp16 overflowed" in record.getMessage() for record in caplog.records)
    expected = tiny_translator(OverflowsInHalf()).translate_batch(frames(2))
    assert np.array_equal(result, expected)
