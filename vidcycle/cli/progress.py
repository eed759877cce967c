"""tqdm progress bars on stderr for the CLI (stdout stays clean for pipelines)."""

import sys
from contextlib import contextmanager

from vidcycle.progress import Progress


class TqdmBar:
    """A tqdm bar behind the library's Bar: the statuses named in `shown` go beside the count."""

    def __init__(self, bar, shown: tuple):
        self.bar, self.shown = bar, shown

    def update(self, count: int = 1, **status) -> None:
        if self.shown and status:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in status.items() if k in self.shown}, refresh=False)
        self.bar.update(count)

    def set_total(self, total: int | None) -> None:
        self.bar.total = total
        self.bar.refresh()


class TqdmProgress(Progress):
    """Bars on stderr; `shown`: the status values (e.g. losses) worth showing beside a count; `keep`: the labels
    of bars left on screen when they finish."""

    def __init__(self, shown: tuple = (), keep: tuple = ()):
        self.shown, self.keep = shown, keep

    @contextmanager
    def bar(self, label: str, total: int | None = None, unit: str = "it", initial: int = 0):
        from tqdm import tqdm
        scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        bar = tqdm(total=total or None, initial=initial, unit=unit, desc=label, file=sys.stderr,
                   leave=label in self.keep,
                   dynamic_ncols=True, smoothing=0.05, **scaled)
        try:
            yield TqdmBar(bar, self.shown)
        finally:
            bar.close()
