"""`vidcycle models ...`: list, inspect, import, pull and export generators."""

import json

import click

from vidcycle.cli.group import cli
from vidcycle.cli.progress import TqdmProgress


@cli.group()
def models():
    """Manage the model store ($VIDCYCLE_HOME, default ~/.cache/vidcycle).

    \b
    --model anywhere accepts a store name, a built-in name or a file path.
      vidcycle models list
      vidcycle models pull horse2zebra          # reference pretrained generator
      vidcycle models import latest_net_G_A.pth --name mine --from horse --to zebra
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json):
    """List models: name, direction, architecture, cost (GMAC per 256x256 frame), training size, source."""
    from vidcycle.models.store import list_models, models_dir  # lazy: --help stays instant
    rows = list_models()
    if as_json:
        click.echo(json.dumps([_summary(m) for m in rows], indent=2))
        return
    if not rows:
        click.echo(f"no models yet in {models_dir()}; try: vidcycle models pull horse2zebra", err=True)
        return
    table = [("NAME", "DIRECTION", "ARCHITECTURE", "GMAC/256²", "SIZE", "ORIGIN", "SOURCE")]
    table += [(m.name, m.info.direction, m.info.architecture, f"{m.info.gmacs:.2f}", str(m.info.train_size),
               m.origin, m.info.source) for m in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


@models.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(name, as_json):
    """Show everything a model file says about itself, the recipe included.

    gmacs_256 is the multiply-adds of one 256x256 frame, counted by torch's
    FLOP counter on the network the file describes (MAC = FLOP / 2). A
    distilled student also names its teacher and its fidelity to it (PSNR,
    SSIM on frames its distillation never trained on).
    """
    from vidcycle.models.modelfile import read_info  # lazy: --help stays instant
    from vidcycle.training.recipe import recipe_from_dict, recipe_kind, recipe_to_toml
    from vidcycle.models.store import resolve_model_path  # lazy: --help stays instant
    path = resolve_model_path(name)
    info = read_info(path)
    summary = _summary_from(name, path, info)
    summary["recipe"] = info.recipe
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key != "recipe":
            click.echo(f"{key + ':':<15}{_shown(key, value)}")
    if info.recipe:
        click.echo("recipe:")
        recipe_text = recipe_to_toml(recipe_from_dict(info.recipe, kind=recipe_kind(info.recipe)))
        click.echo("".join(f"    {line}\n" if line else "\n" for line in recipe_text.splitlines()).rstrip())
    else:
        click.echo("recipe:        (none: imported from another project)")


@models.command("import")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Store name for the imported generator.")
@click.option("--from", "from_domain", default="x", show_default=True, help="Domain it maps from.")
@click.option("--to", "to_domain", default="y", show_default=True, help="Domain it maps to.")
@click.option("--overwrite", is_flag=True, help="Replace a store model of the same name.")
def import_command(checkpoint, name, from_domain, to_domain, overwrite):
    """Import a reference CycleGAN generator (.pth state dict) into the store.

    The architecture (6 or 9 blocks, width) is read from the file's keys. The
    file is loaded with weights_only=True: a checkpoint that would run code
    when unpickled is refused.
    """
    from vidcycle.models.store import import_reference  # lazy: --help stays instant
    stored = import_reference(checkpoint, name, from_domain, to_domain, overwrite=overwrite)
    click.echo(f"imported {stored.name}: {stored.info.direction}, {stored.info.architecture} -> {stored.path}",
               err=True)


@models.command("pull")
@click.argument("name")
@click.option("--overwrite", is_flag=True, help="Download again even if the store has it.")
def pull_command(name, overwrite):
    """Download one of the reference project's pretrained generators.

    \b
    Names: apple2orange orange2apple summer2winter_yosemite winter2summer_yosemite
    horse2zebra zebra2horse monet2photo style_monet style_cezanne style_ukiyoe
    style_vangogh sat2map map2sat cityscapes_photo2label cityscapes_label2photo
    facades_photo2label facades_label2photo iphone2dslr_flower

    The file is verified (it must load as a 9-block generator with strict
    keys) and its sha256 recorded before it appears in the store; a failed
    download leaves nothing behind. Mirror: set VIDCYCLE_PRETRAINED_URL.
    """
    from vidcycle.models.store import pull  # lazy: --help stays instant
    stored = pull(name, overwrite=overwrite, progress=TqdmProgress())
    click.echo(f"pulled {stored.name}: {stored.info.direction}, sha256 {stored.info.source_sha256[:16]}... "
               f"-> {stored.path}", err=True)


@models.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", help="Store name of X->Y ('a2b' also names Y->X 'b2a'). Default: the run's names.")
@click.option("--reverse-name", help="Store name of Y->X when it cannot be derived from --name.")
@click.option("--overwrite", is_flag=True, help="Replace store models of the same names made by something else.")
def export_command(run_dir, name, reverse_name, overwrite):
    """Write the generators of a training run's last checkpoint into the store (both directions; X->Y of a
    one-sided method).

    \b
      vidcycle models export runs/summer2winter
      vidcycle models export runs/summer2winter --name summer2winter_v2
    """
    from vidcycle.training.trainer import export_run  # lazy: --help stays instant
    for stored in export_run(run_dir, name, reverse_name, overwrite=overwrite):
        click.echo(f"exported {stored.name}: {stored.info.direction} -> {stored.path}", err=True)
        click.echo(stored.name)


def _shown(key: str, value) -> str:
    if key == "teacher":
        return f"{value['name']} (content hash {value['content_hash'][:16]}...)"
    if key == "fidelity":
        return (f"PSNR {value['psnr']:.2f} dB, SSIM {value['ssim']:.4f} against the teacher on "
                f"{value['frames']} held-out frames")
    if key == "gmacs_256":
        return f"{value:.3f} (GMAC per 256x256 frame)"
    return str(value)


def _summary(model) -> dict:
    return _summary_from(model.name, model.path, model.info, model.origin)


def _summary_from(name, path, info, origin=None) -> dict:
    summary = {"name": name, "direction": info.direction, "from": info.from_domain, "to": info.to_domain,
               "architecture": info.architecture, "kind": info.spec.kind, "n_blocks": info.spec.n_blocks,
               "ngf": info.spec.ngf, "gmacs_256": info.gmacs, "train_size": info.train_size,
               "source": info.source, "path": str(path), "content_hash": info.content_hash}
    if info.source_sha256:
        summary["source_sha256"] = info.source_sha256
    if info.method:
        summary["method"] = info.method
    if info.weights:
        summary["weights"] = info.weights
    if info.teacher:
        summary["teacher"] = info.teacher
    if info.fidelity:
        summary["fidelity"] = info.fidelity
    if origin:
        summary["origin"] = origin
    return summary


@models.command("export-onnx")
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The .onnx file to write.")
@click.option("--fp16", is_flag=True, help="Weights and activations in float16, for GPU runtimes "
              "(input and output stay float32).")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True,
              help="ONNX opset to target.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def export_onnx_command(name, output, fp16, opset, overwrite):
    """Export a generator to ONNX, checked against torch before it is written.

    \b
    The graph takes a float32 N x 3 x H x W RGB batch in [-1, 1] and returns
    the same shape and range; batch, height and width are dynamic (padding
    and cropping happen inside the graph). Before the file appears, ONNX
    Runtime and torch float32 translate random and structured frames at
    68x124 and 37x53: below 60 dB PSNR (45 dB with --fp16; 8-bit scale)
    the export fails with exit 5 and writes nothing. The parity, domains,
    architecture, training size and the model's content hash are stored in
    the file's metadata.
    """
    from vidcycle.runtime.onnx_export import export_onnx  # lazy: --help stays instant
    result = export_onnx(name, output, "fp16" if fp16 else "fp32", opset, overwrite=overwrite)
    line = (f"exported {name} ({result.precision}, opset {result.opset}): PSNR against torch float32 "
            f"{result.parity_db:.1f} dB at worst, {result.worst_size} (needs >= {result.threshold_db:.0f}); "
            f"ONNX Runtime {_by_size(result.parity_by_size)}")
    if result.fp16_torch_by_size:
        line += f"; fp16 arithmetic (torch) {_by_size(result.fp16_torch_by_size)}"
    click.echo(line, err=True)
    click.echo(str(result.path))


def _by_size(by_size: dict) -> str:
    return ", ".join(f"{size} {db:.1f} dB" for size, db in by_size.items())
