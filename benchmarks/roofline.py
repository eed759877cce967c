"""What this CPU can do at best: the floor under a speed target, measured rather than assumed.

    python benchmarks/roofline.py

The most favourable convolution the generators run (3x3, 256 -> 256 channels, the residual
blocks' shape) sets a compute rate per precision; torch's FLOP counter gives the work of one
training iteration or one translated frame. Work / best rate is a floor no implementation of
the same arithmetic beats on this machine, however well everything else overlaps.
"""

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def best_conv_rate(dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of a 3x3 256->256 convolution on 4 x 60 x 80 activations (best of `repeats`)."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(dtype)
    x = torch.randn(4, 256, 60, 80).to(dtype)
    flops = 2 * 4 * 60 * 80 * 256 * 256 * 9
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def gflop(work) -> float:
    """GFLOP torch counts for one call of `work` (forward and backward, if it runs both)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops() / 1e9


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return "amx_bf16" in handle.read()
    except OSError:
        return False


def main():
    from vidcycle.models.nets import GeneratorSpec, ResnetGenerator
    rates = {name: best_conv_rate(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"best convolution rate, {torch.get_num_threads()} threads: fp32 {rates['fp32']:.0f} GFLOP/s, "
          f"bf16 {rates['bf16']:.0f} GFLOP/s ({rates['bf16'] / rates['fp32']:.1f}x); AMX: {cpu_has_amx()}")
    generator = ResnetGenerator(GeneratorSpec(9, 64)).eval()
    with torch.inference_mode():
        work = gflop(lambda: generator(torch.randn(1, 3, 240, 320)))
    print(f"9-block ngf-64 generator, one 320x240 frame: {work:.1f} GFLOP -> at best "
          f"{rates['fp32'] / work:.2f} fps fp32, {rates['bf16'] / work:.2f} fps bf16")


if __name__ == "__main__":
    main()
