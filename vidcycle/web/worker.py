"""The child process of one task (vidcycle.web.tasks): `python -m vidcycle.web.worker TASK_DIR`.

It calls the library function the matching CLI command calls (translate_inputs as `vidcycle apply`,
train / resume as `vidcycle train`, distill as `vidcycle distill`, export_onnx as `vidcycle models
export-onnx`), writes its progress to progress.json and how it ended to result.json. SIGTERM (cancel)
is Ctrl-C: temporary files go, a run checkpoints. The library's messages go to stderr (the task's log).
"""

import json
import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from vidcycle.errors import VidcycleError, first_line
from vidcycle.files import write_atomic
from vidcycle.progress import Bar, Progress

log = logging.getLogger("vidcycle")


class ProgressFile:
    """progress.json: done / total in a unit, the rate of this process's own work and the time left;
    rewritten at most every 0.3 s."""

    def __init__(self, folder: Path, unit: str):
        self.path, self.unit = folder / "progress.json", unit
        self.done = self.total = self.skipped = 0
        self.label, self.started, self.written = "", time.monotonic(), 0.0

    def begin(self, label: str, total: int | None, initial: int = 0):
        self.label, self.total, self.done, self.skipped = label, total or 0, initial, initial
        self.started = time.monotonic()
        self.write(force=True)

    def add(self, count: int):
        self.done += count
        self.write()

    def write(self, force: bool = False):
        now = time.monotonic()
        if not force and now - self.written < 0.3:
            return
        self.written = now
        elapsed = max(now - self.started, 1e-6)
        rate = (self.done - self.skipped) / elapsed
        left = (self.total - self.done) / rate if rate > 0 and self.total > self.done else None
        write_atomic(self.path, json.dumps({"label": self.label, "done": self.done, "total": self.total,
                                            "unit": self.unit, "rate": round(rate, 3), "skipped": self.skipped,
                                            "seconds_left": None if left is None else round(left, 1)}) + "\n")


class JobReporter:
    """apply's Reporter (vidcycle.apply.jobs) counting the whole job in frames (a photo counts one)."""

    def __init__(self, progress: ProgressFile):
        self.progress, self.clip, self.planned = progress, None, {}

    def job_started(self, total_inputs): ...

    def job_planned(self, frames):
        self.planned = dict(frames)
        self.progress.begin("job", sum(frames.values()))

    def clip_started(self, src, total_frames):
        self.clip = src

    def frames_skipped(self, count):  # finished by an earlier, interrupted run: not in the rate
        self.progress.done += count
        self.progress.skipped += count
        self.progress.write(force=True)

    def input_skipped(self, src, dst, reason):  # its output was made before the server stopped
        self.frames_skipped(self.planned.get(src, 1))

    def frames_done(self, count):
        self.progress.add(count)

    def clip_finished(self):
        self.progress.write(force=True)

    def output_written(self, src, dst):
        if src is not None and src != self.clip:
            self.progress.add(1)  # a photo: no clip_started before it

    def input_failed(self, src, message): ...


class RunProgress(Progress):
    """A run's iterations (and frame gathering) as progress.json."""

    def __init__(self, progress: ProgressFile):
        self.progress = progress

    @contextmanager
    def bar(self, label: str, total: int | None = None, unit: str = "it", initial: int = 0):
        self.progress.unit = unit
        self.progress.begin(label, total, initial)
        outer = self

        class Counted(Bar):
            def update(self, count: int = 1, **status) -> None:
                outer.progress.add(count)
        try:
            yield Counted()
        finally:
            self.progress.write(force=True)


def run_apply(args: dict, folder: Path) -> list[str]:
    """`vidcycle apply INPUTS -m MODEL -o TASK/out --skip-existing`: a job started again after a stop keeps
    the outputs it had made (and a long clip its segments)."""
    from vidcycle.apply.jobs import ApplyOptions, translate_inputs  # lazy: a train task never loads apply
    options = ApplyOptions(**{"skip_existing": True, **args.get("options", {})})
    progress = ProgressFile(folder, "frame")
    try:
        result = translate_inputs(args["inputs"], folder / "out", args["model"], options, JobReporter(progress),
                                  args.get("device", "auto"))
    finally:
        progress.write(force=True)  # the last count, which the 0.3 s throttle may have held back
    result.raise_for_failures()
    made = [path for path in sorted((folder / "out").rglob("*")) if path.is_file()  # this run's and before a stop
            and not any(part.startswith(".") for part in path.relative_to(folder / "out").parts)]
    return [str(path) for path in made]


def run_options(cls, args: dict, **fields):
    """RunOptions / DistillOptions from the page's fields (a time budget in seconds, as `--time`)."""
    budget = float(args["time_budget"]) if args.get("time_budget") else None
    return cls(device=args.get("device", "auto"), max_steps=args.get("max_steps"), time_budget=budget, **fields)


def run_train(args: dict, folder: Path) -> list[str]:
    from vidcycle.training.recipe import shipped_recipes  # lazy: an apply task never loads training
    from vidcycle.training.trainer import RunOptions, resume, run_recipe, train  # lazy: as above
    progress = RunProgress(ProgressFile(folder, "it"))
    if args.get("run_dir"):
        result = resume(args["run_dir"], run_options(RunOptions, args), progress=progress)
    else:
        overrides = {}
        if args.get("iterations"):
            overrides = {"schedule.iterations": args["iterations"] // 2,
                         "schedule.iterations_decay": args["iterations"] - args["iterations"] // 2}
        options = run_options(RunOptions, args, x_inputs=args["x"], y_inputs=args["y"], name=args["name"],
                              out=args["out"])
        recipe = run_recipe(shipped_recipes()[args["recipe"]] if args.get("recipe") else None, overrides, options)
        result = train(recipe, options, progress=progress)
    return [stored.name for stored in result.exported]


def run_distill(args: dict, folder: Path) -> list[str]:
    from vidcycle.training.distillation import DistillOptions, distill, resume_distill  # lazy: not for apply
    from vidcycle.training.recipe import DistillRecipe, load_recipe, shipped_recipes  # lazy: not for apply
    progress = RunProgress(ProgressFile(folder, "it"))
    if args.get("run_dir"):
        result = resume_distill(args["run_dir"], run_options(DistillOptions, args), progress=progress)
    else:
        recipe = load_recipe(shipped_recipes()[args.get("recipe") or "distill"], {}, kind=DistillRecipe)
        options = run_options(DistillOptions, args, data=args["data"], name=args["name"], out=args["out"])
        result = distill(args["teacher"], options, recipe, progress=progress)
    return [stored.name for stored in result.exported]


def run_export_onnx(args: dict, folder: Path) -> list[str]:
    from vidcycle.runtime.onnx_export import export_onnx  # lazy: only this kind needs it
    result = export_onnx(args["model"], folder / "out" / f"{args['model']}.onnx", overwrite=True)
    return [str(result.path)]


RUNNERS = {"apply": run_apply, "train": run_train, "resume": run_train, "distill": run_distill,
           "export-onnx": run_export_onnx}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(folder: Path) -> int:
    task = json.loads((folder / "task.json").read_text())
    signal.signal(signal.SIGTERM, _interrupt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vidcycle: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    from vidcycle.runtime.threads import prepare  # lazy: the thread policy before torch loads
    prepare("apply" if task["kind"] == "apply" else "train")
    outcome = {"status": "failed"}
    try:
        outcome = {"status": "done", "outputs": RUNNERS[task["kind"]](task["args"], folder)}
    except VidcycleError as error:
        outcome = {"status": "failed", "message": first_line(error), "exit_code": error.exit_code}
        log.error("error: %s", first_line(error))
    except KeyboardInterrupt:
        outcome = {"status": "cancelled"}
    except Exception as error:  # a bug: the page says so, the log keeps the traceback
        outcome = {"status": "failed", "message": f"internal error: {first_line(error)} (see log.txt)"}
        raise
    finally:
        outcome["finished"] = time.time()
        write_atomic(folder / "result.json", json.dumps(outcome, indent=2) + "\n")
    return 0 if outcome["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
