"""tqdm progress bars on stderr for the CLI (stdout stays clean for pipelines)."""

import sys


class CountBar:
    """Adapter for the library's progress protocol: start(total or None), update(n), close()."""

    def __init__(self, label: str, unit: str = "file", **tqdm_options):
        self.label, self.unit, self.tqdm_options = label, unit, tqdm_options
        self.bar = None

    def start(self, total):
        from tqdm import tqdm
        self.bar = tqdm(total=total or None, unit=self.unit, desc=self.label, file=sys.stderr, leave=False,
                        **self.tqdm_options)

    def update(self, count: int):
        if self.bar is not None:
            self.bar.update(count)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def DownloadBar(label: str) -> CountBar:
    return CountBar(label, unit="B", unit_scale=True, unit_divisor=1024)
