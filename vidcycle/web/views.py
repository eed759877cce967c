"""What each tab of the page shows, as plain data built from the library: the model table and a model's
card, the runs folder as a list and one run's files, the tasks as a table and one task's progress line.
No gradio here: vidcycle.web.app puts these into components."""

import json
import tomllib
from pathlib import Path

from vidcycle.files import read_json_lines
from vidcycle.models.store import list_models, resolve_model_path
from vidcycle.web.tasks import list_tasks

MODEL_COLUMNS = ["name", "direction", "GMAC/256²", "architecture", "method", "teacher", "origin"]
RUN_COLUMNS = ["run", "method", "iterations", "KID x1000", "status", "folder"]
TASK_COLUMNS = ["id", "kind", "what", "status", "progress"]
RUN_KINDS = ("train", "resume", "distill")


def model_rows() -> list[list]:
    """One row per model in the store and built in (as `vidcycle models list`)."""
    return [[m.name, m.info.direction, round(m.info.gmacs, 2), m.info.architecture, m.info.method or "",
             (m.info.teacher or {}).get("name", ""), m.origin] for m in list_models()]


def model_names() -> list[str]:
    return [m.name for m in list_models()]


def model_card(name: str) -> str:
    """A model's cost, domains and teacher in a few Markdown lines (as `vidcycle models info`).
    Raises ModelError."""
    from vidcycle.models.modelfile import read_info  # lazy: reads one header, no torch model built
    if not name:
        return ""
    info = read_info(resolve_model_path(name))
    lines = [f"**{name}**: {info.direction}, {info.architecture}, {info.gmacs:.2f} GMAC per 256x256 frame, "
             f"trained at {info.train_size} px" + (f" ({info.method})" if info.method else "")]
    if info.teacher:
        fidelity = info.fidelity
        lines.append(f"student of **{info.teacher.get('name')}**" + (
            f": PSNR {fidelity['psnr']:.2f} dB, SSIM {fidelity['ssim']:.3f} against it on {fidelity['frames']} "
            f"held-out frames" if fidelity else ""))
    if info.source:
        lines.append(f"source: {info.source}")
    return "  \n".join(lines)


# ---------------------------------------------------------------- runs

def run_folders(runs: Path) -> list[Path]:
    return sorted((p for p in Path(runs).iterdir() if (p / "recipe.toml").exists()), key=lambda p: p.name) \
        if Path(runs).is_dir() else []


def run_rows(runs: Path, work: Path) -> list[list]:
    """One row per run folder: its name, method, iterations done of the schedule, last KID, status."""
    active = {str(Path(t["args"].get("out") or t["args"].get("run_dir") or "")): t["status"]
              for t in reversed(list_tasks(work, RUN_KINDS))}
    rows = []
    for folder in run_folders(runs):
        facts = run_facts(folder)
        rows.append([folder.name, facts["method"], f"{facts['iteration']} / {facts['total']}",
                     "" if facts["kid"] is None else f"{facts['kid']:.2f}",
                     active.get(str(folder), "finished" if facts["iteration"] >= facts["total"] else "stopped"),
                     str(folder)])
    made = {row[-1] for row in rows}
    rows += [[Path(out).name, "", "", "", "queued", out] for out, status in active.items()
             if status == "queued" and out not in made]  # a new run waiting for its turn has no folder yet
    return rows


def run_facts(folder: Path) -> dict:
    """A run folder's method, iteration (last logged), total iterations, last KID, recipe text,
    loss curves and newest sample grids."""
    text = (folder / "recipe.toml").read_text(encoding="utf-8")
    try:
        recipe = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        recipe = {}
    record = _json(folder / "run.json") or {}
    schedule = recipe.get("schedule", {})
    rows = read_json_lines(folder / "losses.jsonl")
    kids = [row["kid_x1000"] for row in rows if "kid_x1000" in row]
    samples = sorted((folder / "samples").glob("iter_*.png")) if (folder / "samples").is_dir() else []
    curves = folder / "loss_curves.png"
    return {"method": "distill" if "teacher_name" in record else recipe.get("method", "cyclegan"),
            "iteration": max([rows[-1]["iteration"] if rows else 0, *(_iteration(p) for p in samples)]),
            "total": _planned_end(rows, schedule),
            "kid": kids[-1] if kids else None, "recipe": text, "record": record,
            "curves": str(curves) if curves.exists() else None, "samples": [str(p) for p in samples[-4:]]}


def _planned_end(rows: list, schedule: dict) -> int:
    """Where the run ends: its last log row says (a --time plan, --max-steps, epochs); older runs' rows do
    not, and their recipe's iterations stand in."""
    ends = [row["end"] for row in rows if isinstance(row.get("end"), int)]
    return ends[-1] if ends else schedule.get("iterations", 0) + schedule.get("iterations_decay", 0)


# ---------------------------------------------------------------- tasks

def task_rows(work: Path, kinds) -> list[list]:
    return [[t["id"], t["kind"], t["label"], t["status"], progress_line(t)] for t in list_tasks(work, kinds)]


def progress_line(task: dict) -> str:
    """'120 / 288 frames, 41.3 frames/s, 4 s left', or how it ended."""
    result, progress = task.get("result") or {}, task.get("progress") or {}
    if result.get("message"):
        return result["message"]
    if task["status"] == "queued":
        return "waits for the task before it to end"
    if not progress:
        return "starting" if task["status"] == "running" else task["status"]
    unit = progress.get("unit", "it")
    line = f"{progress['done']} / {progress['total'] or '?'} {unit}s"
    if task["status"] == "running" and progress.get("rate"):
        line += f", {progress['rate']:.1f} {unit}s/s"
        if progress.get("seconds_left") is not None:
            line += f", {progress['seconds_left']:.0f} s left"
    return line


def progress_fraction(task: dict) -> float:
    progress = task.get("progress") or {}
    if task.get("status") == "done":
        return 1.0
    return min(1.0, progress["done"] / progress["total"]) if progress.get("total") else 0.0


def _iteration(grid: Path) -> int:
    """iter_000060.png -> 60: a grid is written at the last iteration even between loss-log lines."""
    digits = grid.stem.rpartition("_")[2]
    return int(digits) if digits.isdigit() else 0


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
