"""`vidcycle train`: flags in, one library call, a report out."""

import click

from vidcycle.cli.group import cli
from vidcycle.cli.options import must_exist
from vidcycle.cli.progress import TqdmProgress
from vidcycle.cli.run_flags import find_recipe, flag_values, report, run_flags, setting_overrides, shipped_recipe_list


@cli.command(context_settings={"max_content_width": 100})
@click.option("--x", "x_inputs", multiple=True, callback=must_exist,
              help="Domain X: videos, photos or folders of them (recursive). Repeatable.")
@click.option("--y", "y_inputs", multiple=True, callback=must_exist,
              help="Domain Y, never paired with X. Repeatable.")
@click.option("--name", help="Store name of X->Y; 'a2b' also names Y->X 'b2a'. Default: <x folder>2<y folder>.")
@click.option("--reverse-name", help="Store name of Y->X when it cannot be derived from --name.")
@click.option("--recipe", "recipe_name", metavar="FILE|NAME",
              help=f"Recipe TOML file, or a shipped one: {shipped_recipe_list(distill=False)}. "
                   "Default: the CycleGAN paper's settings (cyclegan); under --time on a CPU, "
                   "cyclegan128-budget.")
@click.option("--lr", type=float, help="Shortcut for --set optim.lr=...")
@click.option("--batch-size", type=int, help="Shortcut for --set optim.batch_size=...")
@click.option("--crop-size", type=int, help="Shortcut for --set data.crop_size=...")
@click.option("--iterations", type=int,
              help="Shortcut: N iterations in all, the first half at constant lr, the second decaying "
                   "linearly (the paper's 100 + 100 epochs, in iterations).")
@click.option("--seed", type=int, help="Shortcut for --set seed=...")
@click.option("--kid", is_flag=True,
              help="At each checkpoint, score KID of G on 32 frames per domain held out of training; it goes "
                   "into losses.jsonl and loss_curves.png (needs the Inception weights: fetched once into the "
                   "store, or --features).")
@click.option("--features", type=click.Path(dir_okay=False),
              help="With --kid: a local copy of the Inception weights (nothing is downloaded).")
@run_flags(resume_help="Continue the run in this folder from its last checkpoint (its own recipe and inputs).",
           export_help="Do not write the generators into the model store at the end.")
def train(x_inputs, y_inputs, name, reverse_name, recipe_name, lr, batch_size, crop_size, iterations, seed, kid,
          features, settings, resume_dir, **flags):
    """Train a generator on two unpaired collections of footage and photos.

    \b
      vidcycle train --x summer_clips/ --y winter_clips/ --name summer2winter
      vidcycle train --x horses/ --y zebras/ --recipe cpu-small --max-steps 3000
      vidcycle train --x summer/ --y winter/ --time 45m   # the best model 45 minutes buy
      vidcycle train --x summer_clips/ --y winter_clips/ --recipe fastcut128 --name summer2winter
      vidcycle train --resume runs/summer2winter       # after a crash or Ctrl-C

    The recipe's method decides what is learned. cyclegan (the default) trains
    G: X->Y and F: Y->X with a cycle loss and exports both directions. cut and
    fastcut (Park et al. 2020) train G alone against a patchwise contrastive
    loss and export X->Y only: one direction, in about two thirds (FastCUT:
    under half) of CycleGAN's time per iteration; for Y->X, swap --x and --y.

    --time plans the run so that the learning rate's decay ends at the budget.
    On a CPU a run with no --recipe then trains cyclegan128-budget (the paper's
    128-px CycleGAN at half width, decaying from the start, with a stability
    term), the recipe that bought most in 40 minutes on our paired benchmark:
    +1.0 dB over cyclegan128 fitted by hand, and half its flicker
    (benchmarks/README.md). --recipe cyclegan keeps the paper's settings.

    Video frames are sampled (data.fps or data.every_nth, data.max_frames_per_clip,
    near-duplicates skipped) into a frame cache once. The run folder gets
    recipe.toml, checkpoint.pt (every schedule.checkpoint_every iterations),
    losses.jsonl, loss_curves.png and samples/iter_N.png grids (real x, G(x),
    F(G(x)), real y, F(y), G(F(y)); one-sided: real x, G(x), real y, G(y)). At
    the end what was learned goes into the model store, ready for
    `vidcycle apply --model NAME`.

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
    from vidcycle.runtime.threads import prepare  # lazy: --help stays instant
    prepare("train")
    from vidcycle.runtime.torchrun import TorchrunEnv  # lazy: --help stays instant
    from vidcycle.training.methods import methods  # lazy: --help stays instant
    from vidcycle.training.run import recipe_changes  # lazy: --help stays instant
    from vidcycle.training.trainer import (RunOptions, resume, run_recipe,  # lazy: --help stays instant
                                           train as train_run)

    overrides = setting_overrides(settings, lr=lr, batch_size=batch_size, crop_size=crop_size, iterations=iterations,
                                  seed=seed)
    options = RunOptions(x_inputs=list(x_inputs), y_inputs=list(y_inputs), reverse_name=reverse_name, kid=kid,
                         features=features, **flag_values(**flags, name=name))
    shown = tuple(dict.fromkeys(loss for record in methods() for loss in record.loss_names))
    bar = TqdmProgress(shown=shown, keep=("train",))
    main = TorchrunEnv.read().main  # under torchrun, the other ranks stay quiet
    if resume_dir:
        if x_inputs or y_inputs or recipe_name or overrides or flags["out"]:
            raise click.UsageError("--resume continues a run with its own inputs, recipe and folder; "
                                   "only --time, --max-steps, --device, --precision, --workers, --name, --kid and "
                                   "export flags go with it")
        result = resume(resume_dir, options, progress=bar)
    else:
        if not x_inputs or not y_inputs:
            raise click.UsageError("give both --x and --y (videos, photos or folders), or --resume RUN_DIR")
        recipe = run_recipe(find_recipe(recipe_name) if recipe_name else None, overrides, options)
        changes = recipe_changes(recipe)
        changed = ", ".join(f"{key}={value}" for key, value in changes.items()) or "the paper's defaults"
        if main:
            click.echo(f"recipe: {changed}", err=True)
        result = train_run(recipe, options, progress=bar)
    if main:
        report(result)
