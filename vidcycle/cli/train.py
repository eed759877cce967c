"""`vidcycle train`: flags in, one library call, a report out."""

import sys

import click

from vidcycle.cli.group import cli


@cli.command(context_settings={"max_content_width": 100})
@click.option("--x", "x_inputs", multiple=True, type=click.Path(exists=True),
              help="Domain X: videos, photos or folders of them (recursive). Repeatable.")
@click.option("--y", "y_inputs", multiple=True, type=click.Path(exists=True),
              help="Domain Y, never paired with X. Repeatable.")
@click.option("--name", help="Store name of X->Y; 'a2b' also names Y->X 'b2a'. Default: <x folder>2<y folder>.")
@click.option("--reverse-name", help="Store name of Y->X when it cannot be derived from --name.")
@click.option("--recipe", "recipe_name", metavar="FILE|NAME",
              help="Recipe TOML file, or a shipped one: horse2zebra, summer2winter, monet2photo, cyclegan128, "
                   "cpu-small, tiny. Default: the paper's settings.")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any recipe value, e.g. --set loss.identity=0. Repeatable.")
@click.option("--lr", type=float, help="Shortcut for --set optim.lr=...")
@click.option("--batch-size", type=int, help="Shortcut for --set optim.batch_size=...")
@click.option("--crop-size", type=int, help="Shortcut for --set data.crop_size=...")
@click.option("--iterations", type=int,
              help="Shortcut: N iterations in all, the first half at constant lr, the second decaying "
                   "linearly (the paper's 100 + 100 epochs, in iterations).")
@click.option("--seed", type=int, help="Shortcut for --set seed=...")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder. Default: runs/NAME (NAME-2... if taken).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              help="Continue the run in this folder from its last checkpoint (its own recipe and inputs).")
@click.option("--max-steps", type=click.IntRange(min=1),
              help="Stop when the iteration counter reaches N (checkpoint and export still happen).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: bf16 on CUDA (fp16 + loss scaling on GPUs without bf16) and on "
                                      "CPUs with native bf16, else fp32.")
@click.option("--workers", type=click.IntRange(min=0), help="Data-loader processes (default: 1 on CPU, 8 on CUDA).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Frame cache (default: $VIDCYCLE_HOME/frames). Frames are decoded once per clip and sampling.")
@click.option("--no-export", is_flag=True, help="Do not write the generators into the model store at the end.")
@click.option("--overwrite", is_flag=True, help="Replace store models of the same names made by something else.")
def train(x_inputs, y_inputs, name, reverse_name, recipe_name, settings, lr, batch_size, crop_size, iterations,
          seed, out, resume_dir, max_steps, device, precision, workers, cache_dir, no_export, overwrite):
    """Train a CycleGAN generator pair on two unpaired collections of footage and photos.

    \b
      vidcycle train --x summer_clips/ --y winter_clips/ --name summer2winter
      vidcycle train --x horses/ --y zebras/ --recipe cpu-small --max-steps 3000
      vidcycle train --resume runs/summer2winter       # after a crash or Ctrl-C

    Video frames are sampled (data.fps or data.every_nth, data.max_frames_per_clip,
    near-duplicates skipped) into a frame cache once. The run folder gets
    recipe.toml, checkpoint.pt (every schedule.checkpoint_every iterations),
    losses.jsonl, loss_curves.png and samples/iter_N.png grids (real x, G(x),
    F(G(x)), real y, F(y), G(F(y))). At the end both directions go into the
    model store, ready for `vidcycle apply --model NAME`.

    \b
    Several processes or machines (DistributedDataParallel; nccl on GPUs, gloo on CPU):
      torchrun --nproc_per_node=4 -m vidcycle train --x A/ --y B/ --name a2b --out runs/a2b
      # two machines, 8 GPUs each; run on both, --node_rank 0 and 1:
      torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST0 --master_port=29500 \\
               -m vidcycle train --x A/ --y B/ --name a2b --out /shared/runs/a2b
    Each process trains on its own shard with optim.batch_size images; rank 0
    alone writes the run folder, which must be on storage all machines see
    for --resume. Inputs and the frame cache must be readable on every machine.
    """
    openmp_wait_policy()
    from vidcycle.training.recipe import load_recipe
    from vidcycle.training.loop import RunOptions, recipe_changes, resume, train as train_run
    from vidcycle.cli.progress import CountBar

    overrides = setting_overrides(settings, lr=lr, batch_size=batch_size, crop_size=crop_size, iterations=iterations,
                           seed=seed)
    options = RunOptions(x_inputs=list(x_inputs), y_inputs=list(y_inputs), out=out, name=name,
                         reverse_name=reverse_name, device=device, precision=precision, workers=workers,
                         max_steps=max_steps, cache_dir=cache_dir, export=not no_export, overwrite=overwrite)
    bar = TrainBar(CountBar)
    if resume_dir:
        if x_inputs or y_inputs or recipe_name or overrides or out:
            raise click.UsageError("--resume continues a run with its own inputs, recipe and folder; "
                                   "only --max-steps, --device, --precision, --workers, --name and export "
                                   "flags go with it")
        result = resume(resume_dir, options, progress=bar)
    else:
        if not x_inputs or not y_inputs:
            raise click.UsageError("give both --x and --y (videos, photos or folders), or --resume RUN_DIR")
        recipe = load_recipe(find_recipe(recipe_name) if recipe_name else None, overrides)
        changes = recipe_changes(recipe)
        shown = ", ".join(f"{key}={value}" for key, value in changes.items()) or "the paper's defaults"
        if _is_rank0():
            click.echo(f"recipe: {shown}", err=True)
        result = train_run(recipe, options, progress=bar)
    if _is_rank0():
        _report(result)


def openmp_wait_policy() -> None:
    """Idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) only when other work shares the CPUs; unless the
    user chose. Takes effect only if torch is not loaded yet. On an idle machine libgomp's default (spin a
    few ms, then sleep) is what the reference implementation runs with, and sleeping costs a futex wake-up
    per parallel region (the issue: 264 s passive vs 243 s spinning for 60 fp32 iterations). With other
    work on the cores, a spinning thread holds a core while its descheduled sibling waits: measured on a
    2-core machine at load 8, a 128-px fp32 step took 11 s passive, 44 s with libgomp's default."""
    import os
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if _busy_cpus() >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _busy_cpus(seconds: float = 0.2) -> float:
    """CPUs' worth of work other processes do now (this one sleeps meanwhile): /proc/stat over a moment,
    else the 1-minute load average."""
    import os
    import time

    def sample():
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    try:
        total_0, idle_0 = sample()
        time.sleep(seconds)
        total_1, idle_1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 1.0
    span = max(1, total_1 - total_0)
    return (1 - (idle_1 - idle_0) / span) * (os.cpu_count() or 1)


def _is_rank0() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"  # under torchrun, the other ranks stay quiet


def _report(result) -> None:
    click.echo(f"run {result.run_dir}: {result.iteration} of {result.total_iterations} iterations", err=True)
    for stored in result.exported:
        click.echo(f"exported {stored.name}: {stored.info.direction} -> {stored.path}", err=True)
    for stored in result.exported:
        click.echo(stored.name)
    if result.failures:
        click.echo(f"vidcycle: {len(result.failures)} input file(s) were skipped (see above)", err=True)


def setting_overrides(settings, **shortcuts) -> dict:
    from vidcycle.errors import RecipeError
    overrides, bad = {}, []
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            bad.append(f"--set {setting!r}: expected SECTION.KEY=VALUE")
            continue
        overrides[key.strip()] = value.strip()
    if bad:
        raise RecipeError("; ".join(bad))
    keys = {"lr": "optim.lr", "batch_size": "optim.batch_size", "crop_size": "data.crop_size", "seed": "seed"}
    for flag, value in shortcuts.items():
        if value is None:
            continue
        if flag == "iterations":
            overrides["schedule.iterations"] = value // 2
            overrides["schedule.iterations_decay"] = value - value // 2
        else:
            overrides[keys[flag]] = value
    return overrides


def find_recipe(name: str):
    """A recipe file path: as given, or one shipped with vidcycle (vidcycle/recipes/NAME.toml)."""
    from pathlib import Path

    from vidcycle.errors import RecipeError
    from vidcycle.training.recipe import shipped_recipes
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    if stem in shipped and path.parent == Path("."):
        return shipped[stem]
    raise RecipeError(f"{name}: recipe file not found; shipped recipes: {', '.join(sorted(shipped))}")


class TrainBar:
    """tqdm on stderr for the training loop: iterations/s and the current losses."""

    SHOWN = ("g_xy", "g_yx", "cycle_x", "cycle_y", "d_x", "d_y")

    def __init__(self, counter_factory, desc: str = "train", shown=SHOWN):
        self.counter_factory, self.desc, self.shown = counter_factory, desc, shown
        self.bar = None

    def frames(self, label):
        return self.counter_factory(label, "file")

    def start(self, total: int, initial: int = 0):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, unit="it", desc=self.desc, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.05)

    def update(self, count: int, losses: dict):
        if self.bar is None:
            return
        shown = {k: f"{v:.3f}" for k, v in losses.items() if k in self.shown}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(count)

    def note(self, text: str):
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
