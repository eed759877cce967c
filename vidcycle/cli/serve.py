"""`vidcycle serve`: the local web app (needs the web extra: pip install 'vidcycle[web]')."""

import click

from vidcycle.cli.group import cli
from vidcycle.cli.options import device_option, must_exist


@cli.command(context_settings={"max_content_width": 100})
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False), callback=must_exist,
              help="A folder the page may read clips, photos and training folders from. Repeatable. Paths "
                   "typed on the page stay inside: '..', symlinks out and absolute paths elsewhere are refused.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but this machine's needs --password.")
@click.option("--password", envvar="VIDCYCLE_SERVE_PASSWORD", metavar="TEXT",
              help="Log-in password (user 'vidcycle'); better through $VIDCYCLE_SERVE_PASSWORD than on the "
                   "command line.")
@click.option("--work", type=click.Path(file_okay=False),
              help="The app's own folder: uploads, jobs (one folder each, with its JSON) and their outputs.  "
                   "[default: $VIDCYCLE_HOME/serve]")
@click.option("--runs", type=click.Path(file_okay=False),
              help="Training and distillation run folders shown under Runs.  [default: WORK/runs]")
@click.option("--max-upload", default="2G", show_default=True, metavar="SIZE",
              help="Largest upload, e.g. 500M or 4G.")
@device_option()
def serve(roots, port, host, password, work, runs, max_upload, device):
    """Try models, run jobs and training runs, and watch them, from a browser.

    \b
      vidcycle serve                                   # http://127.0.0.1:7860
      vidcycle serve --root ~/footage --root /data/photos
      VIDCYCLE_SERVE_PASSWORD=... vidcycle serve --host 0.0.0.0 --root /data

    \b
    Try     pick a model (cost, domains, teacher), drop a photo: before/after in
            a second with the built-in demo; drop a clip: a side-by-side preview.
    Jobs    clips, photos and folders inside a root, run as `vidcycle apply`
            does, with a bar in frames, rate and time left; cancel; play and
            download the result.
    Runs    the runs folder: recipe, iterations, loss curves, sample grids, KID;
            start a run from two folders inside a root, stop, resume.
    Models  list, info, export to ONNX, distil a student.

    Each job and run is a folder under WORK/tasks run by a child process: stop
    the server (or lose it) mid-way and start it again, and the job goes on
    from its journal, the run from its checkpoint. The page calls the same
    library functions as the commands, so everything it does has a CLI line.
    """
    from vidcycle.runtime.memory import parse_size  # lazy: --help stays instant
    from vidcycle.web.server import ServeOptions, serve as serve_app  # lazy: --help stays instant

    try:
        limit = parse_size(max_upload)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--max-upload") from error
    options = ServeOptions(roots=list(roots), work=work, runs=runs, host=host, port=port, password=password,
                           max_upload=limit, device=device)
    serve_app(options, on_ready=lambda url: click.echo(f"vidcycle: serving on {url} (Ctrl-C stops)"))
