"""The group every `vidcycle` command joins, and the one error boundary.

A VidcycleError becomes one line on stderr and its exit code; VIDCYCLE_DEBUG=1
shows the traceback instead. So does an OS error that is the machine's answer, not
a bug (a full disk, a read-only folder, no permission): the file and the reason,
exit code 1. Anything else keeps its traceback: it is a bug.
What the library tells its user goes through the "vidcycle" logger; while a
command runs, its records become "vidcycle: ..." lines on stderr.
"""

import errno
import logging
import os
import sys

import click

from vidcycle.errors import VidcycleError, speak_command_line, user_message
from vidcycle.version import __version__


# What the machine answers a write or an open, that the user can mend: nothing in vidcycle to fix
REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class StderrLines(logging.Handler):
    """The library's messages (the "vidcycle" logger) as lines on stderr, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        kind = "warning: " if record.levelno == logging.WARNING else ""
        tqdm.write(f"vidcycle: {kind}{record.getMessage()}", file=sys.stderr)


class ErrorBoundaryGroup(click.Group):
    def invoke(self, ctx):
        library = logging.getLogger("vidcycle")
        handler, level = StderrLines(), library.level
        library.addHandler(handler)
        library.setLevel(logging.INFO)
        speak_command_line(True)
        try:
            return super().invoke(ctx)
        except VidcycleError as error:
            if os.environ.get("VIDCYCLE_DEBUG"):
                raise
            click.echo(f"vidcycle: error: {user_message(error)}", err=True)
            ctx.exit(error.exit_code)
        except OSError as error:
            if error.errno not in REFUSALS or os.environ.get("VIDCYCLE_DEBUG"):
                raise
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"vidcycle: error: {where}{error.strerror or error}", err=True)
            ctx.exit(VidcycleError.exit_code)
        except KeyboardInterrupt:
            click.echo("vidcycle: interrupted", err=True)
            ctx.exit(130)
        finally:
            speak_command_line(False)
            library.removeHandler(handler)
            library.setLevel(level)


@click.group(cls=ErrorBoundaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vidcycle")
def cli():
    """vidcycle: turn a season, a species or a painter's style across whole videos
    and photo folders with CycleGAN, trained on footage that was never paired.

    \b
    Train a generator pair from two unpaired collections:
      vidcycle train --x summer_clips/ --y winter_clips/ --name summer2winter
    Apply one to clips, photo folders or a shell pipeline:
      vidcycle apply input.mp4 --model summer2winter
    Distil one into a student 10x cheaper to run:
      vidcycle distill summer2winter --data summer_clips/ --name summer2winter-fast
    Manage models (store: $VIDCYCLE_HOME, default ~/.cache/vidcycle):
      vidcycle models list

    Exit codes: 0 ok, 2 bad usage, 3 recipe, 4 media, 5 model, 6 download,
    7 device, 8 output exists, 9 some inputs failed, 10 training.
    Set VIDCYCLE_DEBUG=1 to see tracebacks.
    """
