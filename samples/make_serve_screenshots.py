"""README's screenshots of `vidcycle serve` (samples/readme/serve-*.jpg), taken in Debian's chromium through
the browser tests' helpers, with the built-in demo model and the shipped samples; prints the time from
starting `vidcycle serve` to the first photo translated on the page.

    python samples/make_serve_screenshots.py        # needs: pip install -e '.[test,web]', apt-get install chromium
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from serve_browser import Server, browser, choose, missing, open_tab, wait_text  # noqa: E402

OUT = REPO / "samples" / "readme"


def keep(page, name: str) -> None:
    """The page as a JPEG of at most 1100 px wide (README-sized)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(700)
    png = OUT / f"serve-{name}.png"
    page.screenshot(path=str(png))
    picture = Image.open(png).convert("RGB")
    picture.thumbnail((1100, 1100))
    picture.save(OUT / f"serve-{name}.jpg", quality=82, optimize=True)
    png.unlink()
    print(f"samples/readme/serve-{name}.jpg")


def main() -> None:
    if missing():
        sys.exit(f"needs {missing()}")
    base = Path(tempfile.mkdtemp(prefix="vidcycle-shots-"))
    root = base / "footage"
    for domain in ("summer", "winter"):
        (root / domain).mkdir(parents=True)
        for photo in (REPO / "samples" / "photos").glob(f"{domain}_*.jpg"):
            shutil.copy(photo, root / domain)
    shutil.copy(REPO / "samples" / "summer_clip.mp4", root)
    server = Server(base / "home", base / "work", [root])
    try:
        with sync_playwright() as playwright:
            chromium = browser(playwright)
            page = chromium.new_page(viewport={"width": 1280, "height": 1000})
            server.start()
            open_tab(page, server.url, "Try")
            page.set_input_files("#try-upload input[type=file]", str(root / "summer" / "summer_1.jpg"))
            said = wait_text(page, "#try-status", "translated summer_1.jpg")
            print(f"vidcycle serve start to first photo translated: {time.monotonic() - server.started:.1f} s "
                  f"(server ready after {server.ready_after:.1f} s; on the page: {said.strip()})")
            keep(page, "try-photo")
            open_tab(page, server.url, "Try")
            page.set_input_files("#try-upload input[type=file]", str(root / "summer_clip.mp4"))
            wait_text(page, "#try-status", "first 24 frames", seconds=120)
            page.locator("#try-preview video").wait_for()
            keep(page, "try-clip")
            open_tab(page, server.url, "Jobs")
            page.locator("#job-path textarea").fill("summer_clip.mp4")
            page.locator("#job-start").click()
            wait_text(page, "#job-line", r"running: \d+ / \d+ frames, .* s left", seconds=120)
            keep(page, "jobs-running")
            wait_text(page, "#job-line", r"done", seconds=600)
            page.locator("#job-video video").wait_for()
            keep(page, "jobs-done")
            open_tab(page, server.url, "Runs")
            page.locator("#new-x textarea").fill("summer")
            page.locator("#new-y textarea").fill("winter")
            page.locator("#new-name textarea").fill("summer2winter-try")
            choose(page, "new-recipe", "tiny")
            page.locator("#new-steps input").fill("60")
            page.locator("#new-start").click()
            wait_text(page, "#run-line", r"iteration 60 of 200; task \S+: done", seconds=600)
            page.locator("#run-samples img").first.wait_for()
            keep(page, "runs")
            open_tab(page, server.url, "Models")
            page.locator("#model-onnx").click()
            page.locator("#model-onnx-files a").first.wait_for(timeout=300_000)
            keep(page, "models")
            chromium.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
