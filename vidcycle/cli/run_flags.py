"""What `vidcycle train` and `vidcycle distill` share: the flags of a run, recipe overrides, the progress
bar of the loop and the report of what a run made."""


import click

from vidcycle.cli.options import device_option, must_exist, precision_option

PRECISION_HELP = ("auto: bf16 on CUDA (fp16 + loss scaling on GPUs without bf16) and on CPUs with native bf16, "
                  "else fp32.")


def run_flags(resume_help: str, precision_help: str = PRECISION_HELP, workers_help: str =
              "Data-loader processes (default: 1 on CPU, 8 on CUDA).", cache_help: str =
              "Frame cache (default: $VIDCYCLE_HOME/frames). Frames are decoded once per clip and sampling.",
              export_help: str = "Do not write the models into the model store at the end.",
              overwrite_help: str = "Replace store models of the same names made by something else."):
    """The flags every run takes (where and how to run), as click options."""
    options = [
        click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override any recipe value, e.g. --set loss.identity=0. Repeatable."),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Run folder. Default: runs/NAME (NAME-2... if taken)."),
        click.option("--resume", "resume_dir", type=click.Path(file_okay=False), callback=must_exist,
                     help=resume_help),
        click.option("--time", "time_budget", metavar="DURATION",
                     help="Train for this long (45m, 2h, 1h30m): the speed of the first iterations decides how "
                          "many fit, and the learning rate's decay is planned to end at the budget, with "
                          "checkpoints and the export counted in. --resume keeps the plan and the time spent."),
        click.option("--max-steps", type=click.IntRange(min=1),
                     help="Stop when the iteration counter reaches N (checkpoint and export still happen). "
                          "With --time, whichever binds first ends the run, and the plan's decay ends there."),
        device_option(),
        precision_option(precision_help),
        click.option("--workers", type=click.IntRange(min=0), help=workers_help),
        click.option("--compile", "compile_nets", is_flag=True,
                     help="torch.compile the networks before the first step. Off by default: on a 2-core CPU the "
                          "compile took minutes and the step ran slower (benchmarks/README.md); without a working "
                          "compiler the run trains without it, after one line."),
        click.option("--cache-dir", type=click.Path(file_okay=False), help=cache_help),
        click.option("--no-export", is_flag=True, help=export_help),
        click.option("--overwrite", is_flag=True, help=overwrite_help),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def flag_values(out, max_steps, time_budget, device, precision, workers, compile_nets, cache_dir, no_export,
                overwrite, name=None) -> dict:
    """The run flags as the library's RunFlags fields."""
    from vidcycle.training.budget import parse_duration  # lazy: --help stays instant

    import time  # lazy: only --time needs it

    seconds = parse_duration(time_budget) if time_budget is not None else None
    # the budget counts from the command's start: importing torch is part of what the user waits for
    started = time.monotonic() - _process_age() if time_budget is not None else None
    return dict(name=name, out=out, device=device, precision=precision, workers=workers, max_steps=max_steps,
                time_budget=seconds, time_started=started, compile=compile_nets, cache_dir=cache_dir,
                export=not no_export, overwrite=overwrite)


def _process_age() -> float:
    """Seconds since this process started (Linux; elsewhere 0)."""
    import os  # lazy: only --time needs it

    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rpartition(")")[2].split()[19])
            return max(0.0, float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def report(result) -> None:
    """How far the run got and what it exported (stderr); the exported names on stdout."""
    click.echo(f"run {result.run_dir}: {result.iteration} of {result.total_iterations} iterations", err=True)
    if result.budget:
        from vidcycle.training.budget import format_duration  # lazy: --help stays instant
        click.echo(f"time: {format_duration(result.budget['spent'])} of {format_duration(result.budget['seconds'])}",
                   err=True)
    for stored in result.exported:
        click.echo(f"exported {stored.name}: {stored.info.direction} -> {stored.path}", err=True)
    for stored in result.exported:
        click.echo(stored.name)
    if result.failures:
        click.echo(f"vidcycle: {len(result.failures)} input file(s) were skipped (see above)", err=True)


def setting_overrides(settings, **shortcuts) -> dict:
    from vidcycle.errors import RecipeError  # lazy: --help stays instant

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


def shipped_recipe_list(distill: bool) -> str:
    """The shipped recipes a command takes, from the files that exist: 'a, b (CycleGAN); c (CUT, one-sided,
    X->Y only)...' for train, 'distill, distill-tiny' for distill."""
    from vidcycle.training.recipe import shipped_recipe_methods  # lazy: the module loads for the help only

    methods = shipped_recipe_methods()
    if distill:
        return ", ".join(sorted(name for name, method in methods.items() if method == "distill"))
    groups = []
    for method, label in (("cyclegan", "CycleGAN"), ("cut", "CUT, one-sided: X->Y only"),
                          ("fastcut", "FastCUT, one-sided: X->Y only")):
        names = sorted(name for name, kind in methods.items() if kind == method)
        if names:
            groups.append(f"{', '.join(names)} ({label})")
    others = sorted(name for name, kind in methods.items() if kind not in ("cyclegan", "cut", "fastcut", "distill"))
    return "; ".join(groups + ([", ".join(others)] if others else []))


def find_recipe(name: str, distill: bool = False):
    """A recipe file path: as given, or one shipped with vidcycle (vidcycle/recipes/NAME.toml) for this kind
    of run (training, or distillation with `distill`)."""
    from pathlib import Path

    from vidcycle.errors import RecipeError  # lazy: --help stays instant
    from vidcycle.training.recipe import shipped_recipe_methods, shipped_recipes  # lazy: --help stays instant

    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped, methods = shipped_recipes(), shipped_recipe_methods()
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    if stem in shipped and path.parent == Path(".") and (methods[stem] == "distill") == distill:
        return shipped[stem]
    kind = "distillation" if distill else "training"
    elsewhere = "" if stem not in shipped or path.parent != Path(".") else \
        f" ({stem} is a {'training' if distill else 'distillation'} recipe)"
    raise RecipeError(f"{name}: no such recipe file or shipped {kind} recipe{elsewhere}; shipped {kind} recipes: "
                      f"{shipped_recipe_list(distill)}")
