"""Training speed on this machine: seconds per iteration of the paper's step, ours beside the reference's.

    python benchmarks/train_speed.py [--steps 8] [--quick] [--threads N] [--stability 120] [--loader-seconds 5]
    python benchmarks/train_speed.py --policies PASSIVE,unset,ACTIVE [--rounds 3] [--steps 2]

For the 128-px 6-block ngf-64 recipe (recipes/cyclegan128.toml) and the small
CPU recipe (recipes/cpu-small.toml), batch 1. The yardstick is a plain step
written the way the reference implementation writes it
(benchmarks/reference_cyclegan.py: nn.ReflectionPad2d, float32, no autocast,
no extras); beside it `vidcycle.training.cyclegan.train_step` in float32, in the
precision `vidcycle train` picks by default on this CPU, and each CPU option:
channels_last, oneDNN off, bf16 autocast. All take turns step by step in one
process (so other processes' load falls on all of them alike); reported are
the median and the fastest of --steps samples after two warm-up ones, the
process CPU seconds per iteration (all threads: work done, less sensitive to
load than wall time), and each one's time over the reference's: the ratio of
medians and the median of per-round ratios (neighbouring samples, so slow drifts
in the load cancel). A sample is loss.identity_every iterations of each (the
lazy identity term's whole cycle, of every row), reported per
iteration; "identity every it" is ours with the identity term on every
iteration, as the paper and the reference step, "every 4th it" lazily.
--quick: only the reference and ours in fp32 and in the default precision,
lazy and not, ours with one pass per network call (as the step ran
before it batched the passes that share a network) and ours in fp32 with
torch's convolutions (as before Winograd's and the tap products, which `vidcycle
train` uses for float32 on the CPU: vidcycle/runtime/convolutions.py), --recipe (default the 128-px one), no
stability or loader part; then the floor in the default precision (the
paper's arithmetic: torch's convolutions), and what 0.6x the reference's
step would ask of this CPU.
--policies PASSIVE,unset,ACTIVE: the reference-style step and ours (fp32 and
the default precision) under each OpenMP wait policy, one process per policy,
in turns (--rounds), for --recipe.

Idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the environment
says otherwise, as under `vidcycle train`; the policy applies to all columns.
--threads 1 on a shared machine: with two threads, OpenMP waits on a
descheduled sibling and figures swing. Then checks that bf16 training tracks
float32: the same seed and data trained both ways, losses compared over
windows. Last, the data loader alone (benchmarks/loader_speed.py) against what
training consumes. benchmarks/train_loop_speed.py compares whole runs.
"""

import argparse
import contextlib
import itertools
import math
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

import reference_cyclegan  # noqa: E402
from machine import cpu_description  # noqa: E402
from vidcycle.runtime.device import cpu_has_fast_bf16, precision_name  # noqa: E402
from vidcycle.runtime.convolutions import use_faster_convolutions  # noqa: E402
from vidcycle.runtime.winograd import filters_shared  # noqa: E402
from vidcycle.training.recipe import load_recipe, shipped_recipes  # noqa: E402
from vidcycle.training.amp import Amp  # noqa: E402
from vidcycle.training import cyclegan  # noqa: E402
from vidcycle.training.cyclegan import ImagePool, Nets, build_nets, build_optimizers, train_step  # noqa: E402

REFERENCE = "reference-style fp32"
TORCH_CONVOLUTIONS = "ours fp32, identity every it, torch's convolutions"  # as before Winograd's, tap products
ONE_PASS_PER_CALL = "ours default, identity every it, one pass per call"  # as before the passes were batched
EVERY_IT, EVERY_4TH = {"loss.identity_every": 1}, {"loss.identity_every": 4}  # the paper's identity term; lazy
OPTIONS = [  # label, dtype, channels_last, oneDNN, recipe settings; "default" is what `vidcycle train` picks here
    ("ours fp32", torch.float32, False, True, {}),
    ("ours default", "default", False, True, {}),
    ("ours fp32, identity every it", torch.float32, False, True, EVERY_IT),
    ("ours fp32, identity every 4th it", torch.float32, False, True, EVERY_4TH),
    ("ours default, identity every it", "default", False, True, EVERY_IT),
    ("ours default, identity every 4th it", "default", False, True, EVERY_4TH),
    (ONE_PASS_PER_CALL, "default", False, True, EVERY_IT),
    (TORCH_CONVOLUTIONS, torch.float32, False, True, EVERY_IT),
    ("ours fp32 + channels_last", torch.float32, True, True, {}),
    ("ours fp32, oneDNN off", torch.float32, False, False, {}),
    ("ours bf16 autocast", torch.bfloat16, False, True, {}),
    ("ours bf16 + channels_last", torch.bfloat16, True, True, {}),
    ("ours default + compile", "default", False, True, {}),
    ("ours fp32 + compile", torch.float32, False, True, {}),
]
QUICK = ("ours fp32, identity every it", "ours fp32, identity every 4th it", "ours default, identity every it",
         "ours default, identity every 4th it", ONE_PASS_PER_CALL, TORCH_CONVOLUTIONS)
COMPILED = ("ours default + compile", "ours fp32 + compile")  # torch.compile (inductor): --compile only


def default_dtype(recipe) -> torch.dtype:
    """The precision `vidcycle train --precision auto` trains this recipe in on this machine."""
    from vidcycle.runtime.device import pick_training_precision
    return pick_training_precision("auto", torch.device("cpu"), recipe.model.ngf)


def random_batch(size, batch_size=1, device="cpu", memory=torch.contiguous_format, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x, y = (torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1 for _ in range(2))
    return x.to(device).contiguous(memory_format=memory), y.to(device).contiguous(memory_format=memory)


def make_step(recipe, dtype, channels_last, batch_size=1, device="cpu", compiled=False, separate=False,
              faster_convolutions=True, shared_filters=True):
    """A closure running one `train_step` of fresh nets with these options, counting the iterations as
    training does (so a lazy identity term, loss.identity_every, comes when it would: time
    `iterations_per_sample(recipe)` calls at once), torch.compile'd networks: the first call compiles;
    `separate`: one pass per network call (`one_pass_per_call`); `faster_convolutions`: Winograd's and
    the tap products where `vidcycle train` would use them (`use_faster_convolutions`), else torch's;
    `shared_filters`: each Winograd convolution's weight transformed once a step, as training does
    (`filters_shared`)."""
    torch.manual_seed(0)
    device = torch.device(device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    nets = build_nets(recipe)
    for name, net in nets.items():
        net.to(device, memory_format=memory)
        if faster_convolutions and name in ("g_xy", "g_yx"):  # as training converts: the generators
            use_faster_convolutions(net, device, dtype, layers_read=False)  # CycleGAN reads no layer
    optimizers = build_optimizers(nets, recipe)
    pools = {"x": ImagePool(recipe.optim.pool_size, 1), "y": ImagePool(recipe.optim.pool_size, 2)}
    amp = Amp(device, dtype)
    real_x, real_y = random_batch(recipe.data.crop_size, batch_size, device, memory)
    batch = {"x": real_x, "y": real_y}
    stepped = Nets(*(torch.compile(net) for _, net in nets.items())) if compiled else nets
    iterations = itertools.count()

    def step():
        with one_pass_per_call(separate), filters_shared() if shared_filters else contextlib.nullcontext():
            return train_step(stepped, optimizers, pools, batch, recipe.loss, amp, next(iterations))  # syncs CUDA
    return step


@contextlib.contextmanager
def one_pass_per_call(active: bool):
    """train_step with each network called on one input at a time, as it was before it batched the passes
    that share a network (vidcycle.training.cyclegan.passes)."""
    batched = cyclegan.passes
    if active:
        cyclegan.passes = lambda net, *inputs: [None if tensor is None else net(tensor) for tensor in inputs]
    try:
        yield
    finally:
        cyclegan.passes = batched


def iterations_per_sample(recipe) -> int:
    """Iterations timed together: a whole cycle of the lazy identity term, so each sample pays its share."""
    return recipe.loss.identity_every


def timed_sample(run, count: int) -> tuple[float, float]:
    """Wall and process CPU seconds per iteration over `count` calls of `run`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        run()
    return (time.perf_counter() - start) / count, (time.process_time() - start_cpu) / count


def make_reference_step(recipe, batch_size=1):
    """The reference's optimize_parameters on the same numbers: a plain float32 step, nothing else."""
    model, optim, loss = recipe.model, recipe.optim, recipe.loss
    reference = reference_cyclegan.CycleGANModel(
        ngf=model.ngf, ndf=model.ndf, n_blocks=model.n_blocks, n_layers=model.d_layers, lr=optim.lr,
        beta1=optim.beta1, pool_size=optim.pool_size, lambda_a=loss.cycle, lambda_b=loss.cycle,
        lambda_identity=loss.identity, seed=recipe.seed)
    real_a, real_b = random_batch(recipe.data.crop_size, batch_size)
    batch = {"A": real_a, "B": real_b}

    def step():
        reference.set_input(batch)
        reference.optimize_parameters()
    return step


def time_steps(recipe, dtype, channels_last, steps, batch_size=1, device="cpu"):
    step, count = make_step(recipe, dtype, channels_last, batch_size, device), iterations_per_sample(recipe)
    times = [timed_sample(step, count)[0] for _ in range(steps + 2)][2:]
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


def speed_table(steps, recipes=("cyclegan128", "cpu-small"), labels=None):
    """The reference-style step and our options take turns step by step, so load from other processes
    falls on all of them alike. Returns {(recipe, label): median s/it}."""
    print(f"{'recipe':<12} {'step':<56} {'median s/it':>11} {'best':>6} {'cpu s/it':>8} {'/ ref':>6} "
          f"{'paired':>6} {'first step s':>12}")
    results = {}
    for name in recipes:
        recipe = load_recipe(shipped_recipes()[name])
        options = [option for option in OPTIONS if labels is None or option[0] in labels]
        runners = [(REFERENCE, make_reference_step(recipe), True)]
        count = iterations_per_sample(recipe)  # a whole lazy-identity cycle of every runner
        for label, dtype, channels_last, onednn, settings in options:
            compiled, separate = label in COMPILED, label == ONE_PASS_PER_CALL
            faster = label != TORCH_CONVOLUTIONS
            if dtype == "default":
                dtype = default_dtype(recipe)
                label = label.replace("ours default", f"ours default ({precision_name(dtype)})", 1)
            own = load_recipe(shipped_recipes()[name], settings)
            count = math.lcm(count, iterations_per_sample(own))
            runners.append((label, make_step(own, dtype, channels_last, compiled=compiled, separate=separate,
                                             faster_convolutions=faster), onednn))
        wall = {label: [] for label, _, _ in runners}
        first = {}
        cpu = {label: [] for label, _, _ in runners}
        for n in range(steps + 2):
            for label, run, onednn in runners:
                torch.backends.mkldnn.enabled = onednn
                try:
                    if n == 0:  # the first step alone (a compile), then the rest of its cycle
                        first[label] = timed_sample(run, 1)[0]
                        for _ in range(count - 1):
                            run()
                        continue
                    seconds, cpu_seconds = timed_sample(run, count)
                    if n >= 2:
                        wall[label].append(seconds)
                        cpu[label].append(cpu_seconds)
                finally:
                    torch.backends.mkldnn.enabled = True
        base = statistics.median(wall[REFERENCE])
        for label, _, _ in runners:
            median = statistics.median(wall[label])
            paired = statistics.median(a / b for a, b in zip(wall[label], wall[REFERENCE]))
            results[(name, label)] = median
            print(f"{name:<12} {label:<56} {median:>11.3f} {min(wall[label]):>6.3f} "
                  f"{statistics.median(cpu[label]):>8.3f} {median / base:>5.2f}x {paired:>5.2f}x "
                  f"{first[label]:>12.1f}", flush=True)
    return results


def stability(iterations):
    """Train the same tiny-data run in fp32 and bf16; print windowed mean losses side by side."""
    from vidcycle.training.trainer import RunOptions, train
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


def floor(measured: float, dtype=torch.bfloat16, label="ours bf16 autocast", name="cyclegan128") -> tuple[float, float]:
    """The recipe's iteration at this CPU's best convolution rate in `dtype` (benchmarks/roofline.py),
    against `label`'s measured s/it; returns (GFLOP per iteration, best GFLOP/s)."""
    from roofline import best_conv_rate, cpu_has_amx, gflop
    recipe = load_recipe(shipped_recipes()[name])
    # the paper's arithmetic: torch's convolutions, whose multiply-adds are the paper's
    step, count = make_step(recipe, dtype, False, faster_convolutions=False), iterations_per_sample(recipe)
    step()
    work = sum(gflop(step) for _ in range(count)) / count
    rate = best_conv_rate(dtype)
    print(f"floor: one {name} iteration is {work:.0f} GFLOP (forward and backward); at this CPU's best "
          f"{precision_name(dtype)} convolution rate ({rate:.0f} GFLOP/s, AMX: {cpu_has_amx()}) that is "
          f"{work / rate:.2f} s even if every op ran as fast as the best one; {label} measured {measured:.2f} s "
          f"= {work / measured:.0f} GFLOP/s, {work / measured / rate:.0%} of that rate")
    return work, rate


def floor_of_the_aim(results: dict, name: str = "cyclegan128") -> None:
    """What 0.6x the reference-style step asks of this CPU: the paper's arithmetic at 0.6x its time."""
    recipe = load_recipe(shipped_recipes()[name])
    dtype = default_dtype(recipe)
    label = f"ours default ({precision_name(dtype)}), identity every it"
    work, rate = floor(results[(name, label)], dtype, label, name)
    aim = 0.6 * results[(name, REFERENCE)]
    print(f"0.6x the reference-style step is {aim:.2f} s: the paper's arithmetic at {work / aim:.0f} GFLOP/s, "
          f"{work / aim / rate:.0%} of this CPU's best {precision_name(dtype)} convolution rate")


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


POLICIES = {"PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "unset": {}, "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
            "PASSIVE+spin20k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "20000"}}


def policy_table(names, rounds, steps, recipe_name):
    """The reference-style step and ours (fp32, default precision) under each OpenMP wait policy. A policy
    is read once, when torch loads OpenMP, so each runs in its own process; they take turns, `steps` each."""
    import json
    import subprocess
    wall, cpu = {name: {} for name in names}, {name: {} for name in names}
    for _ in range(rounds):
        for name in names:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(POLICIES[name])
            done = subprocess.run([sys.executable, __file__, "--policy-child", "--steps", str(steps),
                                   "--recipe", recipe_name], env=env, capture_output=True, text=True, check=True)
            for label, times in json.loads(done.stdout.strip().splitlines()[-1]).items():
                wall[name].setdefault(label, []).extend(w for w, _ in times)
                cpu[name].setdefault(label, []).extend(c for _, c in times)
    print(f"{recipe_name}: {'OpenMP policy':<16} {'step':<22} {'median s/it':>11} {'best':>6} {'cpu s/it':>8} "
          f"{'/ ' + names[0]:>10}")
    base = {label: statistics.median(series) for label, series in wall[names[0]].items()}
    for name in names:
        for label, series in wall[name].items():
            median = statistics.median(series)
            print(f"{recipe_name}: {name:<16} {label:<22} {median:>11.3f} {min(series):>6.3f} "
                  f"{statistics.median(cpu[name][label]):>8.3f} {median / base[label]:>9.2f}x", flush=True)


def policy_child(steps, recipe_name):
    recipe = load_recipe(shipped_recipes()[recipe_name])
    dtype = default_dtype(recipe)
    runners = {REFERENCE: make_reference_step(recipe), "ours fp32": make_step(recipe, torch.float32, False),
               f"ours default ({precision_name(dtype)})": make_step(recipe, dtype, False)}
    times, count = {label: [] for label in runners}, iterations_per_sample(recipe)
    for n in range(steps + 1):
        for label, run in runners.items():
            sample = timed_sample(run, count)
            if n:
                times[label].append(sample)
    import json
    print(json.dumps(times))


def cpu_line() -> str:
    """CPU model, the flags that decide CPU training speed, and the threads and OpenMP policy in use."""
    return (f"{cpu_description()}; torch {torch.__version__} kernels {torch.backends.cpu.get_cpu_capability()}; "
            f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")


def load_line(when: str) -> str:
    one, five, _ = os.getloadavg()
    return (f"load average {one:.1f} (1 min), {five:.1f} (5 min) {when}"
            + (": other processes share the CPUs, figures are noisy" if one > 0.5 else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed iterations per option (after 2 warm-up)")
    parser.add_argument("--quick", action="store_true",
                        help="only the reference-style step, ours in fp32 and ours in the default precision, "
                             "128-px recipe; the floor in the default precision, no stability or loader parts")
    parser.add_argument("--stability", type=int, default=120,
                        help="iterations of the fp32-vs-bf16 comparison run (0: skip)")
    parser.add_argument("--loader-seconds", type=float, default=5.0)
    parser.add_argument("--cuda-only", action="store_true", help="only the GPU table (needs CUDA)")
    parser.add_argument("--policies", metavar="LIST",
                        help=f"compare OpenMP wait policies instead ({', '.join(POLICIES)}; comma-separated, "
                             f"the first is the base): each in its own process, in turns, --steps per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns per policy with --policies")
    parser.add_argument("--recipe", default="cyclegan128", help="shipped recipe for --quick and --policies")
    parser.add_argument("--policy-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, one per core). On a machine shared with other "
                             "jobs, 1 avoids OpenMP threads waiting on descheduled siblings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.policy_child:
        return policy_child(args.steps, args.recipe)
    if torch.cuda.is_available() and not args.policies:
        cuda_table(max(args.steps, 10))
        if args.cuda_only:
            return
    print(cpu_line())
    print(f"native bf16: {cpu_has_fast_bf16()}; " + load_line("at start"), flush=True)
    if args.policies:
        names = [name.strip() for name in args.policies.split(",")]
        if unknown := [name for name in names if name not in POLICIES]:
            parser.error(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
        policy_table(names, args.rounds, args.steps, args.recipe)
        print(load_line("at the end"))
        return
    if args.quick:
        results = speed_table(args.steps, (args.recipe,), QUICK)
        print(load_line("after the table"))
        floor_of_the_aim(results, args.recipe)
        return
    results = speed_table(args.steps)
    print(load_line("after the table"))
    bf16 = results[("cyclegan128", "ours bf16 autocast")]
    floor(bf16)
    if args.stability:
        print(f"fp32 vs bf16 training, cpu-small recipe, {args.stability} iterations on synthetic scenes:")
        stability(args.stability)
    loader(args.loader_seconds, bf16)


if __name__ == "__main__":
    main()
