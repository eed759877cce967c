"""Progress on stderr for the CLI (stdout stays clean for pipelines): tqdm bars on a terminal; in a log (stderr
redirected to a file or a pipe) a plain line now and then, never a carriage return.

A log line: `LABEL: 480/768 frames, 21.3 fps, 13 s left`, every VIDCYCLE_PROGRESS_SECONDS seconds (default 10),
and a last one when work that took longer than that ends (work done sooner leaves no line).
"""

import os
import sys
import time
from contextlib import contextmanager

from vidcycle.progress import Progress

LOG_EVERY_SECONDS = 10.0  # often enough that a log shows a job alive, rarely enough to stay readable


def on_terminal() -> bool:
    """True when stderr is a terminal, where bars redraw in place; elsewhere progress is written as lines."""
    return sys.stderr.isatty()


def new_bar(label: str, total: int | None = None, unit: str = "it", initial: int = 0, **tqdm_options):
    """A tqdm bar on a terminal, else a LineBar with tqdm's counting interface (n, total, update, refresh,
    set_postfix, close)."""
    if not on_terminal():
        return LineBar(label, total, unit, initial)
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit=unit, desc=label, file=sys.stderr, dynamic_ncols=True,
                **tqdm_options)


def log_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("VIDCYCLE_PROGRESS_SECONDS", LOG_EVERY_SECONDS)))
    except ValueError:
        return LOG_EVERY_SECONDS


class LineBar:
    """Counts like a tqdm bar, but writes a plain line to stderr every log_interval() seconds and, if it wrote
    any, when closed: count, rate and time left (the rate leaves out what `initial` or a jump in `n` counted as
    done before)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "it", initial: int = 0):
        self.desc, self.total, self.unit = label, total, unit
        self.n = self.initial = self.last_print_n = initial
        self.postfix = ""
        self.interval = log_interval()
        self.started = self.last_line = time.monotonic()
        self.counted = 0  # counted by update() since the start: what the rate is made of
        self.closed = False
        self.lines = 0

    def update(self, count: int = 1) -> None:
        self.n += count
        self.counted += count
        if time.monotonic() - self.last_line >= self.interval:
            self.write()

    def refresh(self) -> None:
        pass  # a line only when its time comes: a log is not redrawn

    def set_postfix(self, values: dict, refresh: bool = False) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed and self.lines:
            self.write(final=True)
        self.closed = True

    def abandon(self) -> None:
        """Work that failed ends without a final line: the error's line says what happened."""
        self.closed = True

    def write(self, final: bool = False) -> None:
        self.lines += 1
        self.last_line = time.monotonic()
        elapsed = self.last_line - self.started
        count = f"{_amount(self.n, self.unit)}/{_amount(self.total, self.unit)}" if self.total else \
            _amount(self.n, self.unit)
        parts = [f"{count} {_plural(self.unit)}".rstrip()]
        rate = self.counted / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(_rate(rate, self.unit))
        if final:
            parts.append(f"done in {elapsed:.0f} s")
        elif rate > 0 and self.total and self.total > self.n:
            parts.append(f"{(self.total - self.n) / rate:.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        sys.stderr.write(f"{self.desc}: {', '.join(parts)}\n")
        sys.stderr.flush()


def _amount(value, unit: str) -> str:
    return f"{value / 2 ** 20:.1f}" if unit == "B" else f"{value:g}"


def _plural(unit: str) -> str:
    return {"B": "MiB", "it": "iterations"}.get(unit, unit + "s")


def _rate(rate: float, unit: str) -> str:
    if unit == "frame":
        return f"{rate:.1f} fps"
    if unit == "B":
        return f"{rate / 2 ** 20:.1f} MiB/s"
    return f"{rate:.2f} it/s" if unit == "it" else f"{rate:.1f} {_plural(unit)}/s"


class TqdmBar:
    """A tqdm bar (or a LineBar) behind the library's Bar: the statuses named in `shown` go beside the count."""

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
    """Bars on stderr (lines in a log); `shown`: the status values (e.g. losses) worth showing beside a count;
    `keep`: the labels of bars left on screen when they finish."""

    def __init__(self, shown: tuple = (), keep: tuple = ()):
        self.shown, self.keep = shown, keep

    @contextmanager
    def bar(self, label: str, total: int | None = None, unit: str = "it", initial: int = 0):
        scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        bar = new_bar(label, total or None, unit, initial, leave=label in self.keep, smoothing=0.05, **scaled)
        try:
            yield TqdmBar(bar, self.shown)
        except BaseException:
            if isinstance(bar, LineBar):
                bar.abandon()
            raise
        finally:
            bar.close()
