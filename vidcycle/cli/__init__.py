"""The command line: a thin click layer over the library.

Each command converts flags, calls one library function and reports; the
error boundary is the group's (vidcycle.cli.group). Heavy imports (torch,
av, cv2) happen inside commands so `--help` is instant.
"""

# Each module adds its commands to the group.
from vidcycle.cli import apply, distill, evaluate, extract, flicker, models, serve, train  # noqa: F401
from vidcycle.cli.group import cli


def main():
    cli(prog_name="vidcycle")
