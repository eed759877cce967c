"""The Gradio page: four tabs (Try, Jobs, Runs, Models) over the library, and its launch.

Gradio (on FastAPI) gives the uploads, image slider, video player, tables and timers; every button calls
the library function its CLI command calls, directly (a photo, a clip's preview) or through a task
(vidcycle.web.tasks). A refused path or a bad upload becomes the CLI's one-line message on the page.
"""

import html
import re
import shutil
import time
from pathlib import Path

import gradio as gr

from vidcycle.apply.jobs import ApplyOptions, translate_image, translate_video
from vidcycle.errors import MediaError, UsageError, VidcycleError, first_line
from vidcycle.files import new_folder
from vidcycle.media.images import IMAGE_SUFFIXES, encode_image, read_image
from vidcycle.runtime.memory import format_size
from vidcycle.runtime.translator import load_model
from vidcycle.training.recipe import shipped_recipes
from vidcycle.web import tasks, views
from vidcycle.web.places import Places, check_name

PREVIEW_FRAMES = 24          # a clip's side-by-side preview: about a second of footage
BROWSER_IMAGES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
DEFAULT_MODEL = "demo-summer2winter"
CSS = """
.vc-bar {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden}
.vc-bar > div {height: 100%; background: #2563eb}
"""


class Page:
    """The page's state on the server: where it may read and write, and the models loaded so far."""

    def __init__(self, places: Places, max_upload: int, device: str = "auto"):
        self.places, self.max_upload, self.device = places, max_upload, device
        self.translators: dict = {}

    # ------------------------------------------------------------ helpers

    def translator(self, name: str):
        """A loaded model, kept while its file stays the same (a photo then takes one forward pass)."""
        from vidcycle.models.store import resolve_model_path  # lazy: only to see whether the file changed
        stamp = resolve_model_path(name).stat().st_mtime_ns
        cached = self.translators.get(name)
        if cached is None or cached[0] != stamp:
            self.translators[name] = cached = (stamp, load_model(name, self.device))
        return cached[1]

    def keep_upload(self, upload) -> Path:
        """Copy an upload out of Gradio's cache into the work folder, after the size check.
        Raises MediaError."""
        if upload is None:
            raise UsageError("drop a photo or a clip first")
        src = Path(upload)
        size = src.stat().st_size
        if size > self.max_upload:
            raise MediaError(f"{src.name}: {format_size(size)} is above the upload limit of "
                             f"{format_size(self.max_upload)} (--max-upload)")
        folder = new_folder(self.places.work / "uploads", "")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.name).lstrip(".") or "upload"  # "my photo.jpg" stays usable
        return Path(shutil.copy2(src, folder / name))

    def server_path(self, root: str, text: str) -> Path:
        return self.places.in_root(text, root)

    # ------------------------------------------------------------ try

    def try_file(self, model: str, upload):
        """A photo: (before, after) for the slider and the PNG to download; a clip: a side-by-side preview."""
        try:
            src = self.keep_upload(upload)
            translator = self.translator(model)
            out = new_folder(self.places.work / "try", "")
            if src.suffix.lower() in IMAGE_SUFFIXES:
                started = time.monotonic()
                dst = translate_image(src, out / f"{src.stem}_{model}.png", translator)
                before = src if src.suffix.lower() in BROWSER_IMAGES else self._png(src, out)
                note = f"translated {src.name} with {model} in {time.monotonic() - started:.2f} s"
                return (gr.update(value=(str(before), str(dst)), visible=True), gr.update(value=None, visible=False),
                        gr.update(value=str(dst), visible=True), gr.update(visible=False), note, None)
            preview = translate_video(src, out / f"{src.stem}_{model}_preview.mp4", translator,
                                      ApplyOptions(max_frames=PREVIEW_FRAMES, side_by_side=True))
            note = (f"{src.name}: the first {preview.frames} frames, source left, {model} right; "
                    f"**Run the whole clip** makes it a job")
            return (gr.update(visible=False), gr.update(value=str(preview.dst), visible=True),
                    gr.update(value=None, visible=False), gr.update(visible=True), note, str(src))
        except VidcycleError as error:
            return (gr.update(), gr.update(), None, gr.update(visible=False), f"error: {first_line(error)}", None)

    @staticmethod
    def _png(src: Path, out: Path) -> Path:
        picture = read_image(src)
        path = out / f"{src.stem}.png"
        path.write_bytes(encode_image(picture.rgb, picture, ".png"))
        return path

    def run_clip(self, model: str, kept: str):
        if not kept:
            return "error: drop a clip first"
        task_id = tasks.submit(self.places.work, "apply", {"inputs": [kept], "model": model, "device": self.device},
                               f"{Path(kept).name} with {model}")
        return f"job {task_id} started: follow it under Jobs"

    # ------------------------------------------------------------ jobs

    def start_job(self, model: str, uploads, root: str, path: str, side_by_side: bool, temporal: bool):
        try:
            inputs = [self.keep_upload(u) for u in uploads or []]
            if (path or "").strip():
                inputs.append(self.server_path(root, path))
            if not inputs:
                raise UsageError("drop clips or photos, or give a file or folder inside a root")
            self.translator(model)  # an unknown model is refused here, in one line, before any work
        except VidcycleError as error:
            return f"error: {first_line(error)}", gr.update()
        options = {"side_by_side": bool(side_by_side), "temporal": 0.6 if temporal else 0.0}
        label = ", ".join(p.name for p in inputs[:3]) + (" ..." if len(inputs) > 3 else "") + f" with {model}"
        task_id = tasks.submit(self.places.work, "apply", {"inputs": [str(p) for p in inputs], "model": model,
                                                           "options": options, "device": self.device}, label)
        return f"job {task_id} started", gr.update(choices=self.task_ids(("apply",)), value=task_id)

    def task_ids(self, kinds) -> list[str]:
        return [t["id"] for t in tasks.list_tasks(self.places.work, kinds)]

    def show_task(self, task_id: str, shown: str):
        """The chosen job's bar and line; its result (a video to play, files to download) once, when done."""
        rows = views.task_rows(self.places.work, ("apply",))
        try:
            task = tasks.read(self.places.work, task_id) if task_id else None
        except VidcycleError as error:
            return rows, html.escape(f"error: {first_line(error)}"), gr.skip(), gr.skip(), shown, gr.skip()
        if task is None:
            return rows, "", gr.skip(), gr.skip(), shown, gr.update(interactive=False)
        cancel = gr.update(interactive=task["status"] in ("running", "queued"))
        bar = (f'<div class="vc-bar"><div style="width:{100 * views.progress_fraction(task):.1f}%"></div></div>'
               f'<p id="job-line">{task["status"]}: {html.escape(views.progress_line(task))}</p>')
        outputs = (task.get("result") or {}).get("outputs") or []
        key = f"{task_id}:{len(outputs)}"
        if key == shown:
            return rows, bar, gr.skip(), gr.skip(), shown, cancel
        files = [str(self.places.inside_own(p)) for p in outputs]
        video = next((f for f in files if f.endswith(".mp4")), None)
        return rows, bar, gr.update(value=video, visible=video is not None), files or None, key, cancel

    def cancel_task(self, task_id: str):
        try:
            tasks.cancel(self.places.work, task_id)
        except VidcycleError as error:
            return f"error: {first_line(error)}"
        return f"{task_id} cancelled"

    # ------------------------------------------------------------ runs

    def start_run(self, root, x, y, recipe, name, iterations, max_steps, minutes):
        try:
            name = check_name(name, "run name")
            x_path, y_path = self.server_path(root, x), self.server_path(root, y)
            out = self.places.runs / name
            if out.exists():
                raise UsageError(f"{name}: a run of that name exists; resume it or pick another name")
        except VidcycleError as error:
            return f"error: {first_line(error)}", gr.update()
        args = {"x": [str(x_path)], "y": [str(y_path)], "recipe": recipe or None, "name": name, "out": str(out),
                "iterations": int(iterations) if iterations else None,
                "max_steps": int(max_steps) if max_steps else None,
                "time_budget": float(minutes) * 60 if minutes else None, "device": self.device}
        task_id = tasks.submit(self.places.work, "train", args, f"train {name}")
        said = "queued: it starts when the run before it ends" \
            if tasks.read(self.places.work, task_id)["status"] == "queued" else "started"
        return f"run {name} {said}", gr.update(choices=self.run_names(), value=name)

    def run_names(self) -> list[str]:
        return [p.name for p in views.run_folders(self.places.runs)]

    def run_folder(self, name: str) -> Path:
        return self.places.inside_own(self.places.runs / check_name(name, "run name"))

    def show_run(self, name: str):
        rows = views.run_rows(self.places.runs, self.places.work)
        try:
            folder = self.run_folder(name) if name else None
        except VidcycleError as error:
            return rows, "", None, None, f"error: {first_line(error)}"
        if folder is None or not (folder / "recipe.toml").exists():
            task = self._run_task(name) if folder else None  # a new run still queued has no folder yet
            line = f"task {task['id']}: {task['status']}, {views.progress_line(task)}" if task else ""
            return rows, "", None, None, line
        facts = views.run_facts(folder)
        task = self._run_task(name)
        line = f"{facts['method']}, iteration {facts['iteration']} of {facts['total']}"
        if task:
            line += f"; task {task['id']}: {task['status']}, {views.progress_line(task)}"
        if facts["kid"] is not None:
            line += f"; KID x1000 {facts['kid']:.2f}"
        return rows, facts["recipe"], facts["curves"], (facts["samples"] or [None])[-1], line

    def _run_task(self, name: str):
        folder = str(self.places.runs / name)
        return next((t for t in tasks.list_tasks(self.places.work, views.RUN_KINDS)
                     if (t["args"].get("out") or t["args"].get("run_dir")) == folder), None)

    def stop_run(self, name: str):
        task = self._run_task(name) if name else None
        if not task or task["status"] not in ("running", "queued"):
            return f"error: {name or 'no run'} is not running"
        tasks.cancel(self.places.work, task["id"])
        if task["status"] == "queued":
            return f"{name} taken out of the queue before it started"
        return f"{name} stopped at its last iteration (checkpointed); Resume continues it"

    def resume_run(self, name: str, max_steps):
        try:
            folder = self.run_folder(name)
        except VidcycleError as error:
            return f"error: {first_line(error)}"
        task = self._run_task(name)
        if task and task["status"] in ("running", "queued"):
            return f"error: {name} is {task['status']}"
        kind = "distill" if views.run_facts(folder)["method"] == "distill" else "resume"
        tasks.submit(self.places.work, kind, {"run_dir": str(folder), "out": str(folder), "device": self.device,
                                              "max_steps": int(max_steps) if max_steps else None}, f"resume {name}")
        return f"{name} resumed"

    # ------------------------------------------------------------ models

    def export_onnx(self, model: str):
        if not model:
            return "error: choose a model first"
        task_id = tasks.submit(self.places.work, "export-onnx", {"model": model}, f"ONNX of {model}")
        return f"exporting {model} to ONNX (task {task_id}); the file appears below when checked"

    def exports(self):
        done = [t for t in tasks.list_tasks(self.places.work, ("export-onnx",)) if t["status"] == "done"]
        files = [str(self.places.inside_own(p)) for t in done for p in t["result"]["outputs"]]
        lines = [f"{t['label']}: {t['status']} {views.progress_line(t) if t['status'] != 'done' else ''}"
                 for t in tasks.list_tasks(self.places.work, ("export-onnx",))]
        return "  \n".join(lines), files or None

    def distill(self, teacher, root, data, name, recipe, max_steps):
        try:
            name = check_name(name, "student name")
            data_path = self.server_path(root, data)
            out = self.places.runs / name
            if out.exists():
                raise UsageError(f"{name}: a run of that name exists; pick another name")
            if not teacher:
                raise UsageError("choose a teacher model first")
        except VidcycleError as error:
            return f"error: {first_line(error)}"
        tasks.submit(self.places.work, "distill", {"teacher": teacher, "data": [str(data_path)], "name": name,
                                                   "out": str(out), "recipe": recipe,
                                                   "max_steps": int(max_steps) if max_steps else None,
                                                   "device": self.device}, f"distill {teacher} -> {name}")
        return f"distilling {teacher} into {name}: follow it under Runs"


def new_choices(known: list, now: list):
    """A dropdown's choices when they changed (a job or run started elsewhere), else left alone, so that a
    list the user has open does not close every tick."""
    return (gr.skip(), known) if now == known else (gr.update(choices=now), now)


def model_choice(page: Page):
    return gr.update(choices=views.model_names())


def build(page: Page) -> gr.Blocks:
    roots = [str(r) for r in page.places.roots]
    names = views.model_names()
    first = DEFAULT_MODEL if DEFAULT_MODEL in names else (names[0] if names else None)
    recipes = sorted(shipped_recipes())
    with gr.Blocks(title="vidcycle") as blocks:
        gr.Markdown(f"## vidcycle\nroots: {', '.join(roots) or 'none (start with --root DIR)'} · "
                    f"work folder: {page.places.work} · runs: {page.places.runs}")
        with gr.Tab("Try", id="try") as try_tab:
            with gr.Row():
                with gr.Column(scale=1):
                    try_model = gr.Dropdown(names, value=first, label="Model", elem_id="try-model")
                    card = gr.Markdown(views.model_card(first) if first else "", elem_id="try-card")
                    upload = gr.File(label="Drop a photo or a clip", elem_id="try-upload")
                    note = gr.Markdown(elem_id="try-status")
                    run_clip = gr.Button("Run the whole clip as a job", visible=False, elem_id="try-run-clip")
                    download = gr.File(label="Translation (PNG)", elem_id="try-download")
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(label="Before / after", type="filepath", elem_id="try-slider",
                                            max_height=600)
                    preview = gr.Video(label="Preview: source | translation", visible=False, elem_id="try-preview")
            kept = gr.State(None)
            try_model.change(lambda m: views.model_card(m), try_model, card)
            upload.upload(page.try_file, [try_model, upload], [slider, preview, download, run_clip, note, kept])
            run_clip.click(page.run_clip, [try_model, kept], note)
        with gr.Tab("Jobs", id="jobs"):
            with gr.Row():
                with gr.Column():
                    job_model = gr.Dropdown(names, value=first, label="Model", elem_id="job-model")
                    job_files = gr.File(label="Clips and photos", file_count="multiple", elem_id="job-files")
                    job_root = gr.Dropdown(roots, value=roots[0] if roots else None, label="Root",
                                           elem_id="job-root")
                    job_path = gr.Textbox(label="or a file or folder inside the root", elem_id="job-path")
                    with gr.Row():
                        side = gr.Checkbox(label="side by side")
                        temporal = gr.Checkbox(label="flicker reduction (--temporal)")
                    job_start = gr.Button("Run", variant="primary", elem_id="job-start")
                    job_note = gr.Markdown(elem_id="job-status")
                with gr.Column():
                    job_pick = gr.Dropdown(page.task_ids(("apply",)), label="Job", elem_id="job-pick",
                                           allow_custom_value=True)
                    job_bar = gr.HTML(elem_id="job-bar")
                    job_cancel = gr.Button("Cancel", elem_id="job-cancel")
                    job_video = gr.Video(label="Result", visible=False, elem_id="job-video")
                    job_download = gr.File(label="Download", file_count="multiple", elem_id="job-download")
            job_table = gr.Dataframe(headers=views.TASK_COLUMNS, interactive=False, elem_id="job-table")
            shown = gr.State("")
            job_start.click(page.start_job, [job_model, job_files, job_root, job_path, side, temporal],
                            [job_note, job_pick])
            job_cancel.click(page.cancel_task, job_pick, job_note)
            job_outputs = [job_table, job_bar, job_video, job_download, shown, job_cancel]
            job_pick.change(lambda t: page.show_task(t, ""), job_pick, job_outputs)
            gr.Timer(1.0).tick(page.show_task, [job_pick, shown], job_outputs)
            job_known = gr.State([])
            gr.Timer(2.0).tick(lambda known: new_choices(known, page.task_ids(("apply",))), job_known,
                               [job_pick, job_known])
        with gr.Tab("Runs", id="runs"):
            run_table = gr.Dataframe(headers=views.RUN_COLUMNS, interactive=False, elem_id="run-table")
            with gr.Row():
                with gr.Column(scale=1):
                    run_pick = gr.Dropdown(page.run_names(), label="Run", elem_id="run-pick",
                                           allow_custom_value=True)
                    run_line = gr.Markdown(elem_id="run-line")
                    with gr.Row():
                        run_stop = gr.Button("Stop", elem_id="run-stop")
                        run_resume = gr.Button("Resume", elem_id="run-resume")
                    run_note = gr.Markdown(elem_id="run-status")
                    recipe_text = gr.Code(label="recipe.toml", elem_id="run-recipe", max_lines=16)
                with gr.Column(scale=3):
                    with gr.Row():
                        curves = gr.Image(label="Loss curves", type="filepath", elem_id="run-curves", height=460)
                        samples = gr.Image(label="Newest sample grid", type="filepath", elem_id="run-samples",
                                           height=460)
            with gr.Accordion("New run from two folders", open=True):
                with gr.Row():
                    new_root = gr.Dropdown(roots, value=roots[0] if roots else None, label="Root")
                    new_x = gr.Textbox(label="X folder (inside the root)", elem_id="new-x")
                    new_y = gr.Textbox(label="Y folder (inside the root)", elem_id="new-y")
                    new_name = gr.Textbox(label="Name (x2y)", elem_id="new-name")
                with gr.Row():
                    new_recipe = gr.Dropdown(recipes, value="cpu-small" if "cpu-small" in recipes else None,
                                             label="Recipe", elem_id="new-recipe")
                    new_iterations = gr.Number(label="Iterations (blank: the recipe's)", precision=0,
                                               elem_id="new-iterations")
                    new_steps = gr.Number(label="Stop at iteration (--max-steps)", precision=0, elem_id="new-steps")
                    new_minutes = gr.Number(label="Time budget, minutes (--time)", elem_id="new-minutes")
                new_start = gr.Button("Start run", variant="primary", elem_id="new-start")
            run_outputs = [run_table, recipe_text, curves, samples, run_line]
            new_start.click(page.start_run, [new_root, new_x, new_y, new_recipe, new_name, new_iterations,
                                             new_steps, new_minutes], [run_note, run_pick])
            run_stop.click(page.stop_run, run_pick, run_note)
            run_resume.click(page.resume_run, [run_pick, new_steps], run_note)
            run_pick.change(page.show_run, run_pick, run_outputs)
            gr.Timer(2.0).tick(page.show_run, run_pick, run_outputs)
            run_known = gr.State([])
            gr.Timer(2.0).tick(lambda known: new_choices(known, page.run_names()), run_known, [run_pick, run_known])
        with gr.Tab("Models", id="models") as models_tab:
            model_table = gr.Dataframe(value=views.model_rows(), headers=views.MODEL_COLUMNS, interactive=False,
                                       elem_id="model-table")
            with gr.Row():
                with gr.Column():
                    model_pick = gr.Dropdown(names, value=first, label="Model", elem_id="model-pick")
                    model_card = gr.Markdown(views.model_card(first) if first else "")
                    onnx = gr.Button("Export to ONNX", elem_id="model-onnx")
                    onnx_note = gr.Markdown(elem_id="model-status")
                    onnx_files = gr.File(label="ONNX files", file_count="multiple", elem_id="model-onnx-files")
                with gr.Column():
                    gr.Markdown("**Distil a student** of the chosen model (a run: follow it under Runs)")
                    student_root = gr.Dropdown(roots, value=roots[0] if roots else None, label="Root")
                    student_data = gr.Textbox(label="Footage of its input domain (inside the root)",
                                              elem_id="student-data")
                    student_name = gr.Textbox(label="Student name", elem_id="student-name")
                    student_recipe = gr.Dropdown(["distill", "distill-tiny"], value="distill", label="Recipe",
                                                 elem_id="student-recipe")
                    student_steps = gr.Number(label="Stop at iteration (--max-steps)", precision=0,
                                              elem_id="student-steps")
                    student_start = gr.Button("Distil", elem_id="student-start")
                    student_note = gr.Markdown(elem_id="student-status")
            model_pick.change(lambda m: views.model_card(m), model_pick, model_card)
            onnx.click(page.export_onnx, model_pick, onnx_note)
            gr.Timer(2.0).tick(page.exports, None, [onnx_note, onnx_files])
            student_start.click(page.distill, [model_pick, student_root, student_data, student_name, student_recipe,
                                               student_steps], student_note)
        refreshed = [try_model, job_model, model_pick, model_table]
        for event in (blocks.load, try_tab.select, models_tab.select):  # a finished run's export shows up
            event(lambda: [model_choice(page)] * 3 + [views.model_rows()], None, refreshed)
    return blocks


def theme() -> gr.themes.Base:
    """The default look with the system's fonts: the page loads nothing from outside this machine."""
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
