"""tqdm progress bars on stderr for the CLI (stdout stays clean for pipelines)."""

import sys


class DownloadBar:
    """Adapter for the store's download progress protocol: start(total), update(n), close()."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def start(self, total: int):
        from tqdm import tqdm
        self.bar = tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=self.label, file=sys.stderr, leave=False)

    def update(self, count: int):
        if self.bar is not None:
            self.bar.update(count)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CountBar:
    """Adapter for the library's item-count progress protocol: start(total), update(n), close()."""

    def __init__(self, label: str, unit: str = "file"):
        self.label, self.unit = label, unit
        self.bar = None

    def start(self, total: int):
        from tqdm import tqdm
        self.bar = tqdm(total=total or None, unit=self.unit, desc=self.label, file=sys.stderr, leave=False)

    def update(self, count: int):
        if self.bar is not None:
            self.bar.update(count)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
