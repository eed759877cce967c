"""Progress of long work: one protocol for every bar the library shows.

A caller passes a `Progress`; the library opens each bar with `with progress.bar(...) as bar:`, so
the code that opens a bar is the code that closes it, even when the work fails. `Progress()` itself
shows nothing; the command line's draws tqdm bars on stderr, or plain lines where stderr is not a terminal
(vidcycle.cli.progress).
"""

from contextlib import contextmanager


class Bar:
    """One piece of work being counted. `status` (e.g. current losses) may be shown beside the count."""

    def update(self, count: int = 1, **status) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        """The work turned out larger or smaller than announced (a time budget's plan)."""


class Progress:
    """Hands out bars; this base shows nothing."""

    @contextmanager
    def bar(self, label: str, total: int | None = None, unit: str = "it", initial: int = 0):
        yield Bar()


QUIET = Progress()


def bar(progress: Progress | None, label: str, total: int | None = None, unit: str = "it", initial: int = 0):
    """`progress.bar(...)`, or a bar that shows nothing when there is no progress to report to."""
    return (progress or QUIET).bar(label, total, unit, initial)
