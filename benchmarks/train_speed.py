"""Training speed on this machine: seconds per iteration of the paper's step, per CPU option.

    python benchmarks/train_speed.py [--steps 8] [--stability 120] [--loader-seconds 5]

For the 128-px 6-block ngf-64 recipe (recipes/cyclegan128.toml) and the small
CPU recipe (recipes/cpu-small.toml), batch 1, times `train_step` (generators,
then discriminators, pools, Adam) with float32 as the reference implementation
runs it, then each option: channels_last, oneDNN off, bf16 autocast. The
options take turns step by step (so other processes' load falls on all of
them alike); reported are the median and the fastest of --steps iterations
after two warm-up steps. --threads 1 on a shared machine: with two threads,
OpenMP waits on a descheduled sibling and figures swing 5x. Then checks that bf16 training tracks float32: the same seed
and data trained both ways, losses compared over windows. Last, the data
loader alone (benchmarks/loader_speed.py) against what training consumes.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# As `vidcycle train` does (vidcycle/cli/train.py): idle OpenMP threads sleep rather than spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vidcycle.recipe import load_recipe, shipped_recipes  # noqa: E402
from vidcycle.training import Amp, ImagePool, build_nets, build_optimizers, train_step  # noqa: E402

VARIANTS = [  # name, dtype, channels_last, (unused), oneDNN
    ("fp32 (reference path)", torch.float32, False, None, True),
    ("fp32 + channels_last", torch.float32, True, None, True),
    ("fp32, oneDNN off", torch.float32, False, None, False),
    ("bf16 autocast (default)", torch.bfloat16, False, None, True),
    ("bf16 + channels_last", torch.bfloat16, True, None, True),
]


def make_step(recipe, dtype, channels_last, batch_size=1, device="cpu"):
    """A closure running one training step of fresh nets with these options."""
    torch.manual_seed(0)
    device = torch.device(device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    nets = build_nets(recipe)
    for _, net in nets.items():
        net.to(device, memory_format=memory)
    optimizers = build_optimizers(nets, recipe)
    pools = {"x": ImagePool(recipe.optim.pool_size, 1), "y": ImagePool(recipe.optim.pool_size, 2)}
    amp = Amp(device, dtype)
    size = recipe.data.crop_size
    batch = {"x": (torch.rand(batch_size, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=memory),
             "y": (torch.rand(batch_size, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=memory)}
    return lambda: train_step(nets, optimizers, pools, batch, recipe.loss, amp)  # floats: syncs CUDA


def time_steps(recipe, dtype, channels_last, steps, batch_size=1, device="cpu"):
    step = make_step(recipe, dtype, channels_last, batch_size, device)
    times = []
    for n in range(steps + 2):
        start = time.perf_counter()
        step()
        if n >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def cuda_table(steps):
    """On a GPU: the reference's fp32 against channels_last + bf16 autocast and fp16 + GradScaler."""
    torch.backends.cudnn.benchmark = True
    print(f"CUDA: {torch.cuda.get_device_name()}")
    print(f"{'recipe':<13} {'batch':>5} {'option':<26} {'median s/it':>11} {'images/s':>9}")
    for name, batch_size in (("cyclegan128", 1), ("summer2winter", 1), ("summer2winter", 8)):
        recipe = load_recipe(shipped_recipes()[name])
        for label, dtype, channels_last in (("fp32", torch.float32, False),
                                            ("bf16 + channels_last", torch.bfloat16, True),
                                            ("fp16 + scaler + ch.last", torch.float16, True)):
            median, _ = time_steps(recipe, dtype, channels_last, steps, batch_size, "cuda")
            print(f"{name:<13} {batch_size:>5} {label:<26} {median:>11.4f} {batch_size / median:>9.1f}",
                  flush=True)


def speed_table(steps):
    """Options take turns step by step, so load from other processes falls on all of them alike."""
    print(f"{'recipe':<13} {'option':<32} {'median s/it':>11} {'best s/it':>9} {'vs fp32':>7}")
    results = {}
    for name in ("cyclegan128", "cpu-small"):
        recipe = load_recipe(shipped_recipes()[name])
        runners = [make_step(recipe, dtype, channels_last) for _, dtype, channels_last, _, _ in VARIANTS]
        times = [[] for _ in VARIANTS]
        for n in range(steps + 2):
            for k, (label, _, _, _, onednn) in enumerate(VARIANTS):
                torch.backends.mkldnn.enabled = onednn
                try:
                    start = time.perf_counter()
                    runners[k]()
                    if n >= 2:
                        times[k].append(time.perf_counter() - start)
                finally:
                    torch.backends.mkldnn.enabled = True
        base = statistics.median(times[0])
        for (label, *_), series in zip(VARIANTS, times):
            median = statistics.median(series)
            results[(name, label)] = median
            print(f"{name:<13} {label:<32} {median:>11.3f} {min(series):>9.3f} {base / median:>6.2f}x", flush=True)
    return results


def stability(iterations):
    """Train the same tiny-data run in fp32 and bf16; print windowed mean losses side by side."""
    from vidcycle.training import RunOptions, train
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_train_learns import X_DARK, X_LIGHT, Y_DARK, Y_LIGHT, scenes, write_domain
    import json
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["VIDCYCLE_HOME"] = str(tmp / "home")
        x = write_domain(tmp / "x", scenes(40, seed=1, size=80), X_DARK, X_LIGHT)
        y = write_domain(tmp / "y", scenes(40, seed=2, size=80), Y_DARK, Y_LIGHT)
        recipe = load_recipe(shipped_recipes()["cpu-small"], {"schedule.iterations": iterations // 2,
                                                               "schedule.iterations_decay": iterations // 2,
                                                               "schedule.log_every": 10})
        logs = {}
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            train(recipe, RunOptions(x_inputs=[x], y_inputs=[y], out=tmp / precision, precision=precision,
                                     workers=0, export=False))
            rows = [json.loads(line) for line in (tmp / precision / "losses.jsonl").open()]
            logs[precision] = rows
            print(f"  {precision}: {iterations} iterations in {time.perf_counter() - start:.0f} s")
        keys = ("g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "d_x", "d_y")
        window = max(1, len(logs["fp32"]) // 4)
        print(f"  {'iterations':<12}" + "".join(f"{k:>16}" for k in keys) + "   (fp32 / bf16, window means)")
        for start in range(0, len(logs["fp32"]), window):
            part = {p: logs[p][start:start + window] for p in logs}
            first, last = part["fp32"][0]["iteration"] - 9, part["fp32"][-1]["iteration"]
            cells = "".join(f"{np.mean([r[k] for r in part['fp32']]):>8.3f}/{np.mean([r[k] for r in part['bf16']]):<7.3f}"
                            for k in keys)
            print(f"  {f'{first}-{last}':<12}{cells}")


def floor(measured: float) -> None:
    """The 128-px recipe's iteration at this CPU's best bf16 convolution rate (benchmarks/roofline.py)."""
    from roofline import best_conv_rate, cpu_has_amx, gflop
    recipe = load_recipe(shipped_recipes()["cyclegan128"])
    step = make_step(recipe, torch.bfloat16, False)
    step()
    work = gflop(step)
    rate = best_conv_rate(torch.bfloat16)
    print(f"floor: one cyclegan128 iteration is {work:.0f} GFLOP (forward and backward); at this CPU's best "
          f"bf16 convolution rate ({rate:.0f} GFLOP/s, AMX: {cpu_has_amx()}) that is {work / rate:.2f} s even "
          f"if every op ran as fast as the best one; measured {measured:.2f} s = {work / measured:.0f} GFLOP/s")


def loader(seconds, train_s_per_it):
    try:
        from loader_speed import benchmark_loader, make_footage
    except ImportError:
        print("(benchmarks/loader_speed.py not found: loader figure skipped)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x, y = make_footage(tmp / "x", seed=1), make_footage(tmp / "y", seed=2)
        for workers in (1, 2):
            result = benchmark_loader([x], [y], 143, 128, workers=workers, seconds=seconds, cache_dir=tmp / "cache")
            print(f"loader alone, 143/128, {workers} worker(s): {result['samples_per_s']:.1f} samples/s = "
                  f"{result['samples_per_s'] * train_s_per_it:.0f}x what training consumes at "
                  f"{train_s_per_it:.2f} s/iteration")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed iterations per option (after 2 warm-up)")
    parser.add_argument("--stability", type=int, default=120,
                        help="iterations of the fp32-vs-bf16 comparison run (0: skip)")
    parser.add_argument("--loader-seconds", type=float, default=5.0)
    parser.add_argument("--cuda-only", action="store_true", help="only the GPU table (needs CUDA)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, one per core). On a machine shared with other "
                             "jobs, 1 avoids OpenMP threads waiting on descheduled siblings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        cuda_table(max(args.steps, 10))
        if args.cuda_only:
            return
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, load average {load:.1f} at start"
          + (" (shared machine: figures are noisy)" if load > 0.5 else ""))
    results = speed_table(args.steps)
    floor(results[("cyclegan128", "bf16 autocast (default)")])
    if args.stability:
        print(f"fp32 vs bf16 training, cpu-small recipe, {args.stability} iterations on synthetic scenes:")
        stability(args.stability)
    loader(args.loader_seconds, results[("cyclegan128", "bf16 autocast (default)")])


if __name__ == "__main__":
    main()
