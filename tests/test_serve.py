"""`vidcycle serve` in a real browser (Playwright driving Debian's chromium) against the app on 127.0.0.1:
a photo comes back with the pixels `vidcycle apply` makes, paths and uploads that must be refused are,
a long clip's job survives a killed server and ends as the CLI's clip, and a training run started from
the page shows its grid and curves and its model under Try."""

import json
import os
import re
import signal
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli, write_clip, write_noisy_images
from serve_browser import Server, browser, choose, fetch, missing, open_tab, wait_text

if missing():
    pytest.skip(f"browser tests need {missing()}", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

SCREENSHOTS = None  # a folder: samples/make_serve_screenshots.py sets it to keep each view as a PNG


def shoot(page, name: str) -> None:
    if SCREENSHOTS is not None:
        page.wait_for_timeout(500)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=False)


def put_tiny_model(home: Path, name: str = "tiny2winter") -> str:
    """A 2-block, ngf-8 generator (random weights) in the store of `home`."""
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.models.nets import GeneratorSpec, build_generator
    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=2, ngf=8)
    (home / "models").mkdir(parents=True, exist_ok=True)
    save_model(home / "models" / f"{name}.safetensors", build_generator(spec),
               ModelInfo(spec=spec, from_domain="tiny", to_domain="winter", train_size=32, source="test"))
    return name


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One server for the module: a store with a tiny model, a root with photos, a work folder."""
    base = tmp_path_factory.mktemp("serve")
    home, root = base / "home", base / "root"
    model = put_tiny_model(home)
    write_noisy_images(root / "summer", 4, (60, 160, 60), seed=1, size=(36, 36))
    write_noisy_images(root / "winter", 4, (220, 220, 240), seed=2, size=(36, 36))
    server = Server(home, base / "work", [root]).start()
    with sync_playwright() as playwright:
        chromium = browser(playwright)
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        yield {"server": server, "page": page, "home": home, "root": root, "model": model, "base": base}
        chromium.close()
    server.stop()


def test_a_photo_dropped_on_try_comes_back_with_the_pixels_vidcycle_apply_makes(site, monkeypatch):
    page, server, model = site["page"], site["server"], site["model"]
    photo = site["base"] / "photo.jpg"
    rng = np.random.default_rng(3)
    cv2.imwrite(str(photo), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    open_tab(page, server.url, "Try")
    choose(page, "try-model", model)
    page.set_input_files("#try-upload input[type=file]", str(photo))
    wait_text(page, "#try-status", rf"translated photo.jpg with {model}")
    shown = page.locator("#try-slider img")
    shown.last.wait_for()
    after = cv2.imdecode(np.frombuffer(fetch(page, shown.last.get_attribute("src")), np.uint8), cv2.IMREAD_COLOR)
    monkeypatch.setenv("VIDCYCLE_HOME", str(site["home"]))
    cli = site["base"] / "cli.png"
    done = run_cli("apply", photo, "-m", model, "-o", cli, "--device", "cpu")
    assert done.exit_code == 0, done.output
    assert np.array_equal(after, cv2.imread(str(cli), cv2.IMREAD_COLOR))


def test_what_must_be_refused_is_refused_in_one_line_and_the_server_goes_on(site, tmp_path):
    page, server, root = site["page"], site["server"], site["root"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    open_tab(page, server.url, "Jobs")
    for typed, said in [(str(outside), "a path outside the roots is refused"),
                        ("summer/../../x", "'..' is refused"),
                        ("escape", "a symlink that leads outside the roots is refused")]:
        page.locator("#job-path textarea").fill(typed)
        page.locator("#job-start").click()
        wait_text(page, "#job-status", re.escape(said))
    open_tab(page, server.url, "Runs")
    page.locator("#new-x textarea").fill("summer")
    page.locator("#new-y textarea").fill("winter")
    page.locator("#new-name textarea").fill("../x2y")
    page.locator("#new-start").click()
    wait_text(page, "#run-status", r"without '\.\.' or '/'")
    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    open_tab(page, server.url, "Try")
    page.set_input_files("#try-upload input[type=file]", str(text))
    wait_text(page, "#try-status", r"notes\.png: not an image \(empty file or unknown format\)")
    photo = tmp_path / "fine.png"
    cv2.imwrite(str(photo), np.full((20, 30, 3), 128, np.uint8))
    open_tab(page, server.url, "Try")  # a fresh drop zone
    page.set_input_files("#try-upload input[type=file]", str(photo))
    wait_text(page, "#try-status", r"translated fine\.png")
    assert server.process.poll() is None
    refused = run_cli("serve", "--host", "0.0.0.0")
    assert refused.exit_code == 2
    assert refused.stderr.strip().count("\n") == 0 and "give a password too" in refused.stderr
