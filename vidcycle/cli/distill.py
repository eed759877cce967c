"""`vidcycle distill`: flags in, one library call, a report out."""

import click

from vidcycle.cli.group import cli
from vidcycle.cli.options import must_exist
from vidcycle.cli.progress import TqdmProgress
from vidcycle.cli.run_flags import find_recipe, flag_values, report, run_flags, setting_overrides, shipped_recipe_list


@cli.command(context_settings={"max_content_width": 100})
@click.argument("teacher", required=False)
@click.option("--data", multiple=True, callback=must_exist,
              help="Footage and photos of the teacher's input domain, or folders of them (recursive), as "
                   "train --x takes them. Your own clips are good data. Repeatable.")
@click.option("--name", help="Store name of the student.")
@click.option("--recipe", "recipe_name", metavar="FILE|NAME",
              help=f"Distillation recipe TOML file, or a shipped one: {shipped_recipe_list(distill=True)}.  "
                   "[default: distill]")
@run_flags(resume_help="Continue the distillation in this folder from its last checkpoint.",
           precision_help="Of the student's training and the teacher's targets; auto as for train.",
           workers_help="Data-loader processes (default: 1 on CPU).",
           cache_help="Frame cache (default: $VIDCYCLE_HOME/frames), shared with train.",
           export_help="Do not put the student into the model store at the end.",
           overwrite_help="Replace a store model of the same name made by something else.")
def distill(teacher, data, name, recipe_name, settings, resume_dir, **flags):
    """Distil TEACHER (any --model: store name, built-in name or file) into a much cheaper student.

    \b
      vidcycle distill summer2winter --data my_clips/ --name summer2winter-fast
      vidcycle apply holiday.mp4 --model summer2winter-fast
      vidcycle distill --resume runs/summer2winter-fast      # after a crash or Ctrl-C

    The student (default recipe: a 6-block ngf-16 ResNet, 2.4 GMAC per
    256x256 frame against 35 for a 6-block ngf-64 teacher) learns to
    reproduce the teacher's output on crops of --data: L1 plus SSIM. Each
    frame gives 4 crop views (recipe `views`) that come back every 4 epochs,
    and the teacher's output on each is computed once and kept. Frames are sampled and cached as
    train does. A few frames are held out; the student's PSNR and SSIM
    against the teacher on them go into its model file with the teacher's
    name and hash (`vidcycle models info NAME`). The run folder gets
    recipe.toml, checkpoint.pt, losses.jsonl, loss_curves.png and
    samples/iter_N.png grids (input, teacher, student, difference x4).
    """
    from vidcycle.runtime.threads import prepare  # lazy: --help stays instant
    prepare("train")
    from vidcycle.training.distillation import (  # lazy: --help stays instant
        DistillOptions, distill as distill_run, resume_distill)
    from vidcycle.training.recipe import DistillRecipe, load_recipe, shipped_recipes  # lazy: --help stays instant
    from vidcycle.training.students import LOSS_NAMES  # lazy: --help stays instant

    overrides = setting_overrides(settings)
    options = DistillOptions(data=list(data), **flag_values(**flags, name=name))
    bar = TqdmProgress(shown=LOSS_NAMES, keep=("distill",))
    if resume_dir:
        if teacher or data or recipe_name or overrides or flags["out"] or flags["cache_dir"]:
            raise click.UsageError("--resume continues a distillation with its own teacher, data, recipe and "
                                   "folder and frame cache; only --time, --max-steps, --device, --precision, --workers, --name "
                                   "and "
                                   "export flags go with it")
        result = resume_distill(resume_dir, options, progress=bar)
    else:
        if not teacher or not data or not name:
            raise click.UsageError("give TEACHER, --data (videos, photos or folders) and --name, "
                                   "or --resume RUN_DIR")
        path = find_recipe(recipe_name, distill=True) if recipe_name else shipped_recipes()["distill"]
        recipe = load_recipe(path, overrides, kind=DistillRecipe)
        result = distill_run(teacher, options, recipe, progress=bar)
    _report(result)


def _report(result) -> None:
    student, teacher = result.gmacs
    fidelity = result.fidelity
    click.echo(f"student: {student:.2f} GMAC per 256x256 frame, {teacher / student:.1f}x cheaper than the teacher "
               f"({teacher:.2f}); on {fidelity['frames']} held-out frames PSNR {fidelity['psnr']:.2f} dB, "
               f"SSIM {fidelity['ssim']:.4f} against the teacher", err=True)
    report(result)
