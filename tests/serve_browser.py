"""Helpers for the browser tests of `vidcycle serve` (tests/test_serve.py) and the README's screenshots
(samples/make_serve_screenshots.py): start the app as `vidcycle serve` does, in its own process group, and
drive Debian's chromium through Playwright."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]


def missing() -> str | None:
    """What the browser tests lack, in a few words, or None."""
    try:
        import gradio  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f"{error.name} (pip install -e '.[test,web]')"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} (apt-get install -y chromium)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`vidcycle serve` in a child process group (its tasks' processes join it), on 127.0.0.1."""

    def __init__(self, home: Path, work: Path, roots, port: int | None = None, password: str | None = None):
        self.home, self.work, self.roots, self.password = home, work, list(roots), password
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def env(self) -> dict:
        env = {**os.environ, "VIDCYCLE_HOME": str(self.home), "PYTHONPATH": str(REPO)}
        env.pop("VIDCYCLE_SERVE_PASSWORD", None)
        return {**env, "VIDCYCLE_SERVE_PASSWORD": self.password} if self.password else env

    def start(self, seconds: float = 120) -> "Server":
        args = [sys.executable, "-m", "vidcycle", "serve", "--port", str(self.port), "--work", str(self.work),
                "--device", "cpu"]
        for root in self.roots:
            args += ["--root", str(root)]
        self.started = time.monotonic()
        self.process = subprocess.Popen(args, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True, text=True)
        deadline = time.monotonic() + seconds
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            lines.append(line)
            if re.search(r"serving on http://127\.0\.0\.1:\d+", line):
                self.ready_after = time.monotonic() - self.started
                self._drain()
                return self
        self.kill()
        raise AssertionError("vidcycle serve did not start:\n" + "".join(lines)[-3000:])

    def _drain(self):
        """Keep reading the server's output so it never blocks on a full pipe."""
        import threading
        self.output: list[str] = []
        threading.Thread(target=lambda: self.output.extend(iter(self.process.stdout.readline, "")),
                         daemon=True).start()

    def kill(self) -> None:
        """SIGKILL the whole process group: the server and every task it runs, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class _Browser:
    """chromium whose pages wait up to 2 minutes for a page or an element (30 s by default): on a busy 2-core
    machine the first page of a Gradio app can take longer than that to load."""

    def __init__(self, launched):
        self.launched = launched

    def new_page(self, **options):
        page = self.launched.new_page(**options)
        page.set_default_timeout(120_000)
        page.set_default_navigation_timeout(120_000)
        return page

    def __getattr__(self, name):
        return getattr(self.launched, name)


def browser(playwright):
    return _Browser(playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"]))


def open_tab(page, url: str, tab: str):
    """Go to `url` and click `tab`. A page that lost its server reloads itself once the server is back (Gradio's
    reconnect), which aborts a navigation made at that moment: then go again."""
    from playwright.sync_api import Error as PlaywrightError
    for attempt in range(3):
        try:
            page.goto(url)
            break
        except PlaywrightError as error:
            if "ERR_ABORTED" not in str(error) or attempt == 2:
                raise
            page.wait_for_load_state()
    page.get_by_role("tab", name=tab).click()


def wait_text(page, selector: str, pattern: str, seconds: float = 60) -> str:
    """The text of `selector` once it matches `pattern` (a regex)."""
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        text = page.locator(selector).inner_text() if page.locator(selector).count() else ""
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(200)
    raise AssertionError(f"{selector}: {pattern!r} never showed; last text: {text!r}")


def choose(page, elem_id: str, value: str) -> None:
    """Pick `value` in a Gradio dropdown."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=True).click()


def fetch(page, url: str) -> bytes:
    """A file the page shows, fetched with the page's own session."""
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return response.body()
