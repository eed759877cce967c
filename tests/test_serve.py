"""`vidcycle serve` in a real browser (Playwright driving Debian's chromium) against the app on 127.0.0.1:
a photo comes back with the pixels `vidcycle apply` makes, paths and uploads that must be refused are,
a long clip's job survives a killed server and ends as the CLI's clip, and a training run started from
the page shows its grid and curves and its model under Try."""

import json
import re
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from conftest import clip_facts as facts, run_cli, write_clip, write_noisy_images
from serve_browser import Server, browser, choose, fetch, missing, open_tab, wait_text

if missing():
    pytest.skip(f"browser tests need {missing()}", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

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
def chromium():
    with sync_playwright() as playwright:
        launched = browser(playwright)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, chromium):
    """One server for the module: a store with a tiny model, a root with photos, a work folder."""
    base = tmp_path_factory.mktemp("serve")
    home, root = base / "home", base / "root"
    model = put_tiny_model(home)
    write_noisy_images(root / "summer", 4, (60, 160, 60), seed=1, size=(36, 36))
    write_noisy_images(root / "winter", 4, (220, 220, 240), seed=2, size=(36, 36))
    server = Server(home, base / "work", [root]).start()
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    yield {"server": server, "page": page, "home": home, "root": root, "model": model, "base": base}
    page.close()
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


def test_a_clip_dropped_on_try_shows_a_side_by_side_preview_and_runs_whole_as_a_job(site):
    page, server, model = site["page"], site["server"], site["model"]
    clip = write_clip(site["base"] / "short.mp4", frames=30, size=(64, 48), fps=12)
    open_tab(page, server.url, "Try")
    choose(page, "try-model", model)
    page.set_input_files("#try-upload input[type=file]", str(clip))
    wait_text(page, "#try-status", r"short\.mp4: the first 24 frames")
    preview = page.locator("#try-preview video")
    preview.wait_for()
    with av.open(str(_save(page, preview.get_attribute("src"), site["base"] / "preview.mp4"))) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames) == (128, 48, 24)  # source | translation
    page.locator("#try-run-clip").click()
    said = wait_text(page, "#try-status", r"job \S+ started")
    task_id = said.split()[1]
    open_tab(page, server.url, "Jobs")
    choose(page, "job-pick", task_id)
    wait_text(page, "#job-line", r"done: 30 / 30 frames", seconds=120)


def test_a_job_cancelled_from_the_page_stops_and_leaves_no_output(site):
    page, server, model = site["page"], site["server"], site["model"]
    write_clip(site["root"] / "cancel_me.mp4", frames=12 * 24, size=(192, 128), fps=12)
    open_tab(page, server.url, "Jobs")
    choose(page, "job-model", model)
    page.locator("#job-path textarea").fill("cancel_me.mp4")
    page.locator("#job-start").click()
    said = wait_text(page, "#job-status", r"job \S+ started")
    wait_text(page, "#job-line", r"running: \d+ / 288 frames")
    page.locator("#job-cancel").click()
    wait_text(page, "#job-status", r"\S+ cancelled", seconds=30)
    wait_text(page, "#job-line", r"^cancelled", seconds=30)
    out = site["base"] / "work" / "tasks" / said.split()[1] / "out"
    assert out.is_dir() and not list(out.iterdir())  # a cancelled job is never continued: its segments go


def _save(page, url: str, path: Path) -> Path:
    path.write_bytes(fetch(page, url))
    return path


def test_a_long_clip_job_goes_on_after_the_server_is_killed_and_ends_as_the_cli_clip(tmp_path, monkeypatch,
                                                                                     chromium):
    from vidcycle.apply.journal import JOURNAL
    from vidcycle.apply.segments import SEGMENT_SECONDS
    home, root, work = tmp_path / "home", tmp_path / "root", tmp_path / "work"
    model = put_tiny_model(home)
    root.mkdir()
    fps, seconds = 12, 3 * SEGMENT_SECONDS + 4  # four segments
    clip = write_clip(root / "long.mp4", frames=fps * seconds, size=(192, 128), fps=fps, audio=True)
    server = Server(home, work, [root]).start()
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    try:
        open_tab(page, server.url, "Jobs")
        choose(page, "job-model", model)
        page.locator("#job-path textarea").fill("long.mp4")
        page.locator("#job-start").click()
        wait_text(page, "#job-line", rf"running: \d+ / {fps * seconds} frames")
        journal = next((work / "tasks").glob(f"*/out/.long*.parts")) / JOURNAL
        deadline = time.monotonic() + 120
        while not journal.exists() or len(journal.read_text().splitlines()) < 2:  # a segment is done
            assert time.monotonic() < deadline
            time.sleep(0.005)
        server.kill()
        task = next((work / "tasks").iterdir())
        assert not (task / "result.json").exists(), "the job ended before the kill; make the clip longer"
        server.start()
        open_tab(page, server.url, "Jobs")
        choose(page, "job-pick", task.name)
        wait_text(page, "#job-line", rf"done: {fps * seconds} / {fps * seconds} frames", seconds=180)
        page.locator("#job-video video").wait_for()
        shown = page.locator("#job-download a").first.get_attribute("href")
        downloaded = tmp_path / "downloaded.mp4"
        downloaded.write_bytes(fetch(page, shown))
    finally:
        page.close()
        server.kill()
    progress = json.loads((task / "progress.json").read_text())
    assert progress["skipped"] >= fps * SEGMENT_SECONDS  # the restarted job kept the finished segments
    monkeypatch.setenv("VIDCYCLE_HOME", str(home))
    cli = tmp_path / "cli.mp4"
    assert run_cli("apply", clip, "-m", model, "-o", cli, "--device", "cpu").exit_code == 0
    pts, pixels, audio = facts(cli)
    pts_web, pixels_web, audio_web = facts(downloaded)
    assert len(pts) == fps * seconds and pts == pts_web
    assert np.array_equal(pixels, pixels_web)
    assert audio == audio_web and len(audio) > 0
    with av.open(str(downloaded)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")  # plays in browsers


def test_a_run_started_from_two_folders_shows_its_grid_and_curves_and_its_model_under_try(site):
    page, server = site["page"], site["server"]
    open_tab(page, server.url, "Runs")
    page.locator("#new-x textarea").fill("summer")
    page.locator("#new-y textarea").fill("winter")
    page.locator("#new-name textarea").fill("sum2win")
    choose(page, "new-recipe", "tiny")
    page.locator("#new-steps input").fill("10")
    page.locator("#new-start").click()
    wait_text(page, "#run-status", "run sum2win started")
    wait_text(page, "#run-line", r"cyclegan, iteration 10 of 10; task \S+: done", seconds=240)
    page.locator("#run-samples img").first.wait_for()
    page.locator("#run-curves img").wait_for()
    assert "iter_000010.png" in page.locator("#run-samples").inner_html()
    page.locator("#new-steps input").fill("20")
    page.locator("#run-resume").click()  # on to iteration 20, from the checkpoint
    wait_text(page, "#run-status", "sum2win resumed")
    wait_text(page, "#run-line", r"iteration 20 of 20; task \S+: done", seconds=120)
    page.locator("#new-steps input").fill("")
    page.locator("#run-resume").click()  # on towards 200, stopped from the page
    wait_text(page, "#run-line", r"iteration (2[5-9]|[3-9]\d|1\d\d) of 200; task \S+: running", seconds=120)
    page.locator("#run-stop").click()
    wait_text(page, "#run-status", "sum2win stopped")
    wait_text(page, "#run-line", r"task \S+: cancelled", seconds=60)
    open_tab(page, server.url, "Try")
    page.locator("#try-model input").click()
    assert page.get_by_role("option", name="sum2win", exact=True).count() == 1
    assert page.get_by_role("option", name="win2sum", exact=True).count() == 1


def test_a_second_run_waits_for_the_first_and_starts_when_it_is_stopped(site):
    page, server = site["page"], site["server"]
    open_tab(page, server.url, "Runs")
    for name, iterations, steps in (("long1", "100000", ""), ("short2", "", "10")):
        page.locator("#new-x textarea").fill("summer")
        page.locator("#new-y textarea").fill("winter")
        page.locator("#new-name textarea").fill(name)
        choose(page, "new-recipe", "tiny")
        page.locator("#new-iterations input").fill(iterations)
        page.locator("#new-steps input").fill(steps)
        page.locator("#new-start").click()
        wait_text(page, "#run-status", f"run {name} ")
    wait_text(page, "#run-status", "run short2 queued: it starts when the run before it ends")
    wait_text(page, "#run-table", r"short2\s+queued")
    wait_text(page, "#run-line", r"task \S+: queued, waits for the task before it to end")
    choose(page, "run-pick", "long1")
    wait_text(page, "#run-line", r"iteration [1-9]\d* of \d+; task \S+: running", seconds=120)
    page.locator("#run-stop").click()
    wait_text(page, "#run-status", "long1 stopped")
    choose(page, "run-pick", "short2")
    wait_text(page, "#run-line", r"cyclegan, iteration 10 of 10; task \S+: done", seconds=240)


def test_a_student_distilled_from_the_models_tab_is_a_run_and_a_model(site):
    page, server, model = site["page"], site["server"], site["model"]
    open_tab(page, server.url, "Models")
    choose(page, "model-pick", model)
    page.locator("#student-data textarea").fill("summer")
    page.locator("#student-name textarea").fill("tiny-fast")
    choose(page, "student-recipe", "distill-tiny")
    page.locator("#student-steps input").fill("4")
    page.locator("#student-start").click()
    wait_text(page, "#student-status", "distilling tiny2winter into tiny-fast")
    open_tab(page, server.url, "Runs")
    choose(page, "run-pick", "tiny-fast")
    wait_text(page, "#run-line", r"distill, iteration 4 of 60; task \S+: done", seconds=180)
    open_tab(page, server.url, "Models")
    wait_text(page, "#model-table", r"tiny-fast")
    choose(page, "model-pick", "tiny-fast")
    page.locator("#model-onnx").click()  # checked against torch before the file appears
    page.locator("#model-onnx-files a").first.wait_for(timeout=120_000)
    assert "tiny-fast.onnx" in page.locator("#model-onnx-files a").first.get_attribute("href")


def test_with_a_password_the_page_asks_for_it(tmp_path, chromium):
    server = Server(tmp_path / "home", tmp_path / "work", [], password="correct horse").start()
    page = chromium.new_page()
    try:
        wrong = page.request.post(f"{server.url}/login", form={"username": "vidcycle", "password": "wrong"})
        assert wrong.status == 400
        assert page.request.get(f"{server.url}/config").status == 401
        page.goto(server.url)
        page.get_by_label("username").fill("vidcycle")
        page.get_by_label("password").fill("correct horse")
        page.get_by_role("button", name="Login").click()
        page.get_by_role("tab", name="Try").wait_for()
    finally:
        page.close()
        server.stop()
