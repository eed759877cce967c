"""Out-of-memory errors on demand, for checking the translator's fallback (halve the batch, then tiles):
a real one on a GPU whose allocator is capped, and a stand-in for dry runs on the CPU.

Imports torch alone and sets nothing at import, so tests import it too (tests/test_cuda.py)."""

import contextlib

import torch


@contextlib.contextmanager
def capped_gpu_memory(cap: int, device="cuda"):
    """The caching allocator holds at most `cap` bytes of `device` meanwhile: past that, a real
    torch.cuda.OutOfMemoryError, whatever torch.cuda.mem_get_info (and so the default budget) says."""
    device = torch.device(device)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


@contextlib.contextmanager
def cpu_stand_in(generator: torch.nn.Module, pixels: int):
    """On the CPU, what a capped GPU does: `generator` raises CUDA's out-of-memory error for more than one
    frame at once, or for `pixels` or more (a whole frame); tiles, being smaller, run."""
    def refuse(module, args):
        x = args[0]
        if x.device.type != "meta" and (x.shape[0] > 1 or x.shape[-1] * x.shape[-2] >= pixels):
            raise torch.cuda.OutOfMemoryError("out of memory (a stand-in for a capped GPU)")
    handle = generator.register_forward_pre_hook(refuse)
    try:
        yield
    finally:
        handle.remove()
