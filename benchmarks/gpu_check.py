"""One prepared GPU check: everything only a CUDA machine can test, in at most 8 minutes on one H200, with
a results file however far it gets.

    python benchmarks/gpu_check.py --out $OUT                    # on the GPU machine: every stage
    python benchmarks/gpu_check.py --stages apply,oom --out DIR  # some of them
    python benchmarks/gpu_check.py --dry-run                     # tiny sizes on the CPU, in seconds

Each stage is a function below; --help lists them in the order they run. Each runs under its own time
budget (and all of them under --budget seconds) and records {status, seconds, figures, error} in
OUT/results.json, rewritten atomically before and after every stage: a stage that fails is named there
with its error and traceback and the next stage still runs, and a run killed from outside leaves the
stage it was in marked "running". The exit status is 1 when any stage failed. The dry run keeps the
script from rotting: tests/test_gpu_check.py runs it with the default tests.

Stages that need PyAV (training and distillation, whose frame cache reads video, and the end-to-end
stage) are skipped, with the reason, where it is not installed. On a machine that cannot reach a package
index, bring it as a wheel for that machine's Python (`pip download av --only-binary=:all: -d .whl/`,
with --python-version and --platform when they differ from this one's) and run there:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out $OUT

OUT receives results.json and cuda-tests.log.
"""

import argparse
import contextlib
import copy
import datetime
import gc
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.etree import ElementTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
# gpu_apply puts the repository on sys.path and sets OMP_WAIT_POLICY as `vidcycle apply` does
from gpu_apply import REPO, TARGET_FPS, network_fps, random_generator, sync, synthetic_frames  # noqa: E402
from machine import cpu_description  # noqa: E402
from memory_cap import capped_gpu_memory, cpu_stand_in  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vidcycle  # noqa: E402
from vidcycle.metrics import psnr  # noqa: E402

MIN_PSNR_DB = {"fp16": 40.0, "bf16": 38.0}  # against fp32: tests/test_translator.py says why these
MIN_TILED_PSNR_DB = 40.0  # tiles against whole frames, as tests/test_memory_bounds.py
IDENTICAL_DB = 100.0  # identical frames have an infinite PSNR; written as 100 dB to keep results.json plain JSON
RESUME_SLACK = 10  # on CUDA, resumed weights may differ by this many times what two uninterrupted runs do
MIN_STAGE_SECONDS = 5  # a stage is not started with less of --budget left


@dataclass(frozen=True)
class Sizes:
    """What the stages run: the GPU figures by default, tiny ones for --dry-run."""

    frame: tuple = (1920, 1080)          # width, height for every apply stage
    teacher: tuple = (9, 64)             # blocks, ngf: the 256-px generator
    student: tuple = (6, 16)             # the default distilled student (recipes/distill.toml)
    fps_frames: int = 32                 # frames timed per translator, after a warm-up batch
    parity_frames: int = 2               # frames compared between precisions
    plan_budget: str = "8G"              # a budget under which memory, not the index cap, sets the batch
    oom_frames: int = 4
    oom_cap: int = 512 * 2 ** 20         # bytes the capped process may hold: less than one whole frame needs
    tile_budget: int = 2 ** 30           # bytes that make the plan tile whole frames in fp32 (half in 16 bits)
    train: tuple = (("128px", "cyclegan128"), ("256px", "summer2winter"))
    train_set: tuple = ()                # recipe overrides for every training run
    steps: int = 50
    log_every: int = 10                  # s/it is timed between the first and the last loss-log row
    resume: tuple = (10, 20)             # N steps, stop, resume to M
    distill_recipe: str = "distill"
    distill_teacher: tuple = (6, 64)     # the 128-px teacher recipes/distill.toml is sized against
    distill_steps: int = 20
    ddp_crop: int = 256
    images: tuple = (320, 240)           # training photos per domain are this size
    pipeline_frames: int = 96
    workers: int | None = None           # data-loader processes: vidcycle's default


TINY_NET = (("model.n_blocks", 1), ("model.ngf", 8), ("model.ndf", 8), ("data.load_size", 36),
            ("data.crop_size", 32))
DRY_RUN = replace(Sizes(), frame=(160, 128), teacher=(1, 8), student=(1, 4), fps_frames=2, parity_frames=2,
                  plan_budget="24M", oom_frames=2, tile_budget=3 * 2 ** 20, train_set=TINY_NET, steps=2, log_every=1,
                  resume=(1, 2), distill_recipe="distill-tiny", distill_teacher=(1, 8), distill_steps=2, ddp_crop=32,
                  images=(48, 40), pipeline_frames=4, workers=0)


class CheckFailed(Exception):
    """A figure is not what it must be."""


class Skipped(Exception):
    """The stage cannot run here; the message says why."""


class OutOfTime(Exception):
    """The stage ran past its time budget."""


def expect(condition, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Check:
    """What every stage works with."""

    device: torch.device
    sizes: Sizes
    work: Path                     # scratch: photos, runs, model files
    out: Path                      # results.json and logs
    student: Path | None = None    # a distilled student's model file; else random weights
    settings: dict = field(default_factory=dict)  # --set: recipe overrides for the training stages
    _photos: tuple | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def label(self, net: str) -> str:
        if net == "student" and self.student:
            return f"student {self.student.name}"
        blocks, ngf = getattr(self.sizes, net)
        return f"{net} {blocks}-block ngf-{ngf}"

    def translator(self, net: str, precision: str = "auto", max_memory=None):
        """A vidcycle.Translator for the "teacher" or the "student"; random weights, the same every time."""
        if net == "student" and self.student:
            return vidcycle.load_model(self.student, device=self.device, precision=precision, max_memory=max_memory,
                                       engine="torch")
        return vidcycle.Translator(*random_generator(*getattr(self.sizes, net)), self.device, precision,
                                   max_memory=max_memory)

    def photos(self) -> tuple[Path, Path]:
        """Two folders of 12 noise photos each, of different colours: domains X and Y."""
        if self._photos is None:
            import cv2
            width, height = self.sizes.images
            rng = np.random.default_rng(0)
            for domain, colour in (("x", (200, 80, 40)), ("y", (40, 80, 200))):
                (self.work / domain).mkdir()
                for n in range(12):
                    photo = np.clip(np.add(colour, rng.integers(-60, 60, (height, width, 3))), 0, 255)
                    cv2.imwrite(str(self.work / domain / f"{n}.png"), photo.astype(np.uint8))
            self._photos = (self.work / "x", self.work / "y")
        return self._photos

    def schedule(self) -> dict:
        """Recipe overrides for a short run timed from its loss log: no checkpoints or grids on the way."""
        return {"schedule.log_every": self.sizes.log_every, "schedule.checkpoint_every": 10 ** 6,
                "schedule.sample_every": 10 ** 6}

    def train(self, recipe: str, precision: str, steps: int, name: str) -> Path:
        """`steps` iterations of the shipped recipe through vidcycle.train; returns the run folder."""
        x, y = self.photos()
        overrides = {**dict(self.sizes.train_set), **self.schedule(), **self.settings}
        options = vidcycle.RunOptions(x_inputs=[x], y_inputs=[y], out=self.work / name, device=str(self.device),
                                      precision=precision, workers=self.sizes.workers, max_steps=steps,
                                      cache_dir=self.work / "frames", export=False)
        return vidcycle.train(vidcycle.load_recipe(REPO / "recipes" / f"{recipe}.toml", overrides), options).run_dir


# ---------------------------------------------------------------- helpers the stages share

def needs_pyav() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise Skipped("PyAV is not installed (pip install av)") from None


def db(a: np.ndarray, b: np.ndarray) -> float:
    return min(psnr(a, b), IDENTICAL_DB)


def fps(translator, frames: np.ndarray) -> float:
    """Network frames/s at the translator's planned batch (never more than the frames given)."""
    height, width = frames.shape[1:3]
    return network_fps(translator, frames, min(translator.batch_size(width, height), len(frames)))


def reduced_precisions(check: Check) -> tuple:
    return ("fp16", "bf16") if check.cuda else ("bf16",)  # no fp16 on the CPU


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def library_warnings():
    """What vidcycle tells its user meanwhile (a halved batch, tiles after running out of memory, the fp16
    fallback: the "vidcycle" logger's warnings), printed and collected as a list of lines."""
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
            print(f"vidcycle: warning: {lines[-1]}", flush=True)
    logger, handler = logging.getLogger("vidcycle"), Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def seconds_per_iteration(run_dir: Path) -> float:
    """From the loss log's timestamps (a row every log_every steps): setup and the first steps left out."""
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    expect(len(rows) >= 2, f"{run_dir}: fewer than two loss-log rows to time")
    return (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["iteration"] - rows[0]["iteration"])


def checkpoint_nets(run_dir: Path) -> tuple[int, dict]:
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return state["iteration"], state["nets"]


def largest_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two runs' weights, all nets."""
    return max(float((a[net][key].float() - b[net][key].float()).abs().max()) for net in a for key in a[net])


def vidcycle_cli(*args) -> None:
    """`python -m vidcycle ARGS` in this process: the command a user types, without another torch import."""
    from vidcycle.cli import cli
    code = cli.main([str(a) for a in args], prog_name="vidcycle", standalone_mode=False)
    expect(not code, f"vidcycle {' '.join(map(str, args))} exited with {code} (its message is above)")


# ---------------------------------------------------------------- the stages, in the order they run

@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable   # (check, figures): fills `figures`, raises CheckFailed, Skipped or any error
    budget: float   # seconds
    summary: str


STAGES: dict[str, Stage] = {}


def stage(name: str, budget: float, summary: str):
    def register(run):
        STAGES[name] = Stage(name, run, budget, summary)
        return run
    return register


@stage("cuda-tests", 150, "pytest -m cuda: the tests that mean something on a GPU, on the real device "
                          "(log in OUT/cuda-tests.log)")
def cuda_tests(c: Check, figures: dict) -> None:
    report = c.work / "cuda-tests.xml"
    # Only the files that mark tests cuda are collected: others import PyAV, which the GPU machine may lack.
    files = [str(path) for path in sorted((REPO / "tests").glob("test_*.py")) if "mark.cuda" in path.read_text()]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rfEs",
               f"--junitxml={report}", *files]
    with open(c.out / "cuda-tests.log", "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)  # killed on OutOfTime
    expect(report.is_file(), f"pytest exited with {result.returncode} and no report (see cuda-tests.log)")
    root = ElementTree.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    wanting_cuda = sum(skip.get("message", "").endswith("needs CUDA") for skip in root.iter("skipped"))
    failed = [case.get("name") for case in root.iter("testcase") if case.find("failure") is not None
              or case.find("error") is not None]
    figures.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                   skipped_for_want_of_cuda=wanting_cuda, failed_tests=failed, exit_code=result.returncode)
    print(f"pytest -m cuda: {figures['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
          f"{counts['skipped']} skipped")
    expect(counts["tests"] > 0, "no test is marked cuda")
    expect(not failed, f"{', '.join(failed)} failed (see cuda-tests.log)")
    expect(not c.cuda or not wanting_cuda, "cuda tests were skipped for want of CUDA on a CUDA machine")


@stage("apply", 90, "fp16 and bf16 against fp32 (bf16 alone on the CPU) at the frame size: PSNR and network "
                    "frames/s, for the 9-block ngf-64 generator and a distilled student (--student, or random "
                    "weights of the default 6-block ngf-16)")
def apply_precisions(c: Check, figures: dict) -> None:
    width, height = c.sizes.frame
    frames = synthetic_frames(c.sizes.fps_frames, width, height)
    for net in ("teacher", "student"):
        row = figures[c.label(net)] = {}
        reference = None
        for precision in ("fp32", *reduced_precisions(c)):
            translator = c.translator(net, precision)
            with library_warnings() as warned:  # an fp16 overflow would say so here
                output = translator.translate_batch(frames[:c.sizes.parity_frames])
                row[f"{precision}_fps"] = fps(translator, frames)
            if reference is None:
                reference = output
            else:
                row[f"{precision}_psnr_db"] = db(output, reference)
            row[f"{precision}_batch"] = translator.batch_size(width, height)
            if warned:
                row[f"{precision}_warnings"] = warned
            print(f"{c.label(net)}, {precision}: {row[f'{precision}_fps']:.1f} frames/s at batch "
                  f"{row[f'{precision}_batch']}" + (f", {row[f'{precision}_psnr_db']:.1f} dB against fp32"
                                                    if precision != "fp32" else ""), flush=True)
            del translator
            release_memory(c.device)
    for label, row in figures.items():
        for precision in reduced_precisions(c):
            expect(row[f"{precision}_psnr_db"] >= MIN_PSNR_DB[precision],
                   f"{label}, {precision}: {row[f'{precision}_psnr_db']:.1f} dB against fp32, below "
                   f"{MIN_PSNR_DB[precision]:.0f}")


@stage("memory-plan", 45, "the batch the memory plan picks at the frame size, with the default budget and with "
                          "a set one, against the peak it measures (torch.cuda.max_memory_allocated)")
def memory_plan(c: Check, figures: dict) -> None:
    for label, budget in (("default budget", None), (f"budget {c.sizes.plan_budget}", c.sizes.plan_budget)):
        row = figures[label] = measured_plan(c, budget)
        print(f"{label}: batch {row['batch']}, measured {row['measured_bytes'] / 2 ** 20:.1f} MiB of a "
              f"{row['budget_bytes'] / 2 ** 20:.1f} MiB budget"
              + (f", estimated {row['estimate_bytes'] / 2 ** 20:.1f}" if row["estimate_bytes"] else ""), flush=True)
        release_memory(c.device)
    for label, row in figures.items():
        expect(row["measured_bytes"] <= row["budget_bytes"], f"{label}: measured {row['measured_bytes']} bytes, "
                                                             f"over the {row['budget_bytes']} the plan was made for")


def measured_plan(c: Check, budget) -> dict:
    """The teacher's plan for one batch of frames under `budget` (None: the default), and the peak bytes
    that batch took: weights, frames, activations, cuDNN's workspace."""
    from vidcycle.runtime.memory import measure_peak
    width, height = c.sizes.frame
    translator = c.translator("teacher", "auto", budget)
    chosen = translator.plan(height, width)
    frames = torch.from_numpy(synthetic_frames(chosen.batch, width, height))
    _, peak = measure_peak(lambda: translator.translate_tensor(frames), c.device)
    measured = peak + sum(t.nbytes for t in translator.generator.state_dict().values())
    row = {"precision": translator.precision, "budget_bytes": translator.budget, "batch": chosen.batch,
           "tile": chosen.tile or 0, "index_cap": translator.index_cap(height, width), "measured_bytes": measured,
           "estimate_bytes": chosen.estimate}  # 0: the quick bound sufficed, no estimate was made
    if chosen.estimate:
        row["estimate_over_measured"] = chosen.estimate / measured
    return row


@stage("oom", 60, "out of memory for real: the process capped (set_per_process_memory_fraction) below one whole "
                  "frame; the translator halves the batch, then tiles; frames equal the uncapped output")
def out_of_memory(c: Check, figures: dict) -> None:
    width, height = c.sizes.frame
    frames = synthetic_frames(c.sizes.oom_frames, width, height)
    # CPU bf16 (a dry run) tiles nothing in half a whole frame's memory: the fp32 blending buffers dominate
    precision = "auto" if c.cuda else "fp32"
    expected = c.translator("teacher", precision).translate_batch(frames)
    release_memory(c.device)
    translator = c.translator("teacher", precision)
    planned = translator.plan(height, width).batch
    cap = capped_gpu_memory(c.sizes.oom_cap, c.device) if c.cuda else cpu_stand_in(translator.generator,
                                                                                      width * height)
    started = time.perf_counter()
    with cap, library_warnings() as warned:
        result = translator.translate_batch(frames)
    final = translator.plan(height, width)
    figures.update(precision=translator.precision, cap_bytes=c.sizes.oom_cap if c.cuda else 0, planned_batch=planned,
                   final_batch=final.batch, final_tile=final.tile or 0, seconds=time.perf_counter() - started,
                   psnr_db=db(result, expected), warnings=warned,
                   max_abs_diff=int(np.abs(result.astype(int) - expected.astype(int)).max()))
    print(f"{figures['psnr_db']:.1f} dB against the uncapped output", flush=True)
    expect(any("out of memory" in line for line in warned), "no out-of-memory warning: the cap did not bite")
    expect(final.tile is not None, f"after running out of memory the plan is {final}, not tiles")
    expect(figures["psnr_db"] >= MIN_TILED_PSNR_DB, f"{figures['psnr_db']:.1f} dB against the uncapped output")


@stage("tiles", 60, "tiles on the device against whole frames, in fp32 and the default precision: PSNR and "
                    "frames/s of each")
def tiles(c: Check, figures: dict) -> None:
    width, height = c.sizes.frame
    frames = synthetic_frames(c.sizes.fps_frames, width, height)
    for precision in ("fp32", "auto"):
        whole = c.translator("teacher", precision)
        budget = c.sizes.tile_budget // (1 if whole.precision == "fp32" else 2)
        tiled = c.translator("teacher", precision, budget)
        chosen = tiled.plan(height, width)
        label = f"{precision} ({tiled.precision})" if precision == "auto" else precision
        expect(chosen.tile is not None, f"{label}: a {budget}-byte budget still plans whole frames")
        sample = frames[:c.sizes.parity_frames]
        row = figures[label] = {"tile": chosen.tile, "overlap": chosen.overlap,
                                "psnr_db": db(tiled.translate_batch(sample), whole.translate_batch(sample)),
                                "whole_fps": fps(whole, frames), "tiled_fps": fps(tiled, frames)}
        print(f"{label}: {chosen.tile}-px tiles {row['psnr_db']:.1f} dB against whole frames; "
              f"{row['tiled_fps']:.1f} frames/s tiled, {row['whole_fps']:.1f} whole", flush=True)
        del whole, tiled
        release_memory(c.device)
    for label, row in figures.items():
        expect(row["psnr_db"] >= MIN_TILED_PSNR_DB, f"{label}: tiles {row['psnr_db']:.1f} dB against whole frames")


@stage("train", 240, "training steps at the 128-px and 256-px configs (recipes cyclegan128, summer2winter, and "
                     "--set), in the default precision and in fp32: s/it")
def train(c: Check, figures: dict) -> None:
    needs_pyav()
    for config, recipe in c.sizes.train:
        for precision in ("auto", "fp32"):
            started = time.perf_counter()
            run = c.train(recipe, precision, c.sizes.steps, f"train-{config}-{precision}")
            row = figures[f"{config} {precision}"] = {"s_per_it": seconds_per_iteration(run), "steps": c.sizes.steps,
                                                      "run_seconds": time.perf_counter() - started}
            print(f"{config} ({recipe}), {precision}: {row['s_per_it']:.4f} s/it", flush=True)


@stage("resume", 90, "a checkpoint resumes exactly: N steps, then --resume to M, against an uninterrupted M-step "
                     "run (fp32, deterministic cuDNN; on CUDA within what two uninterrupted runs differ by)")
def resume(c: Check, figures: dict) -> None:
    needs_pyav()
    n, m = c.sizes.resume
    recipe = c.sizes.train[0][1]
    workers = [] if c.sizes.workers is None else ["--workers", c.sizes.workers]
    torch.backends.cudnn.deterministic = True  # within training's benchmark mode (the runner restores both)
    straight = c.train(recipe, "fp32", m, "resume-straight")
    split = c.train(recipe, "fp32", n, "resume-split")
    vidcycle_cli("train", "--resume", split, "--max-steps", m, "--device", c.device, "--no-export", *workers)
    (done, a), (resumed, b) = checkpoint_nets(straight), checkpoint_nets(split)
    figures.update(steps=n, resumed_to=m, max_abs_diff=largest_difference(a, b))
    expect(done == resumed == m, f"iterations {done} (straight) and {resumed} (resumed), not {m}")
    if figures["max_abs_diff"] and c.cuda:  # GPU kernels may sum in another order: what do two runs differ by?
        _, again = checkpoint_nets(c.train(recipe, "fp32", m, "resume-straight-again"))
        figures["two_straight_runs_max_abs_diff"] = largest_difference(a, again)
    print(f"{n} steps, resumed to {m}: weights differ by at most {figures['max_abs_diff']:.3g} from {m} straight"
          + (f" (two straight runs: {figures['two_straight_runs_max_abs_diff']:.3g})"
             if "two_straight_runs_max_abs_diff" in figures else ""), flush=True)
    allowed = RESUME_SLACK * figures.get("two_straight_runs_max_abs_diff", 0.0)
    expect(figures["max_abs_diff"] <= allowed, f"resumed weights differ by {figures['max_abs_diff']:.3g} "
                                               f"(allowed {allowed:.3g})")


@stage("distill", 90, "a few distillation steps (recipes/distill.toml: a 6-block ngf-16 student) from a random "
                      "6-block ngf-64 teacher: s/it and the student's fidelity on held-out frames")
def distill(c: Check, figures: dict) -> None:
    needs_pyav()
    from vidcycle.models.modelfile import save_model
    teacher = c.work / "teacher.safetensors"
    save_model(teacher, *random_generator(*c.sizes.distill_teacher))
    recipe = vidcycle.load_recipe(REPO / "recipes" / f"{c.sizes.distill_recipe}.toml", c.schedule(),
                                  kind=vidcycle.DistillRecipe)
    options = vidcycle.DistillOptions(data=[c.photos()[0]], name="gpu-check-student", out=c.work / "distill",
                                      device=str(c.device), workers=c.sizes.workers, max_steps=c.sizes.distill_steps,
                                      cache_dir=c.work / "frames", export=False)
    result = vidcycle.distill(str(teacher), options, recipe)
    student_gmac, teacher_gmac = result.gmacs
    figures.update(steps=result.iteration, s_per_it=seconds_per_iteration(result.run_dir), student_gmac=student_gmac,
                   teacher_gmac=teacher_gmac, psnr_db=result.fidelity["psnr"], ssim=result.fidelity["ssim"])
    print(f"{result.iteration} steps, {figures['s_per_it']:.4f} s/it; student {figures['psnr_db']:.1f} dB against "
          f"its teacher", flush=True)
    expect(result.iteration == c.sizes.distill_steps, f"{result.iteration} steps, not {c.sizes.distill_steps}")


@stage("ddp", 60, "one DistributedDataParallel step in a 1-process NCCL group (gloo on the CPU): a process "
                  "started as torchrun starts one (MASTER_ADDR/PORT, RANK=0, WORLD_SIZE=1); gradients equal the "
                  "plain net's")
def ddp(c: Check, figures: dict) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    job = json.dumps({"device": str(c.device), "net": c.sizes.teacher, "crop": c.sizes.ddp_crop})
    # Its own process: a hung collective is killed with it (on OutOfTime), not waited for here.
    result = subprocess.run([sys.executable, __file__, DDP_CHILD, job], env=env, capture_output=True, text=True)
    print(result.stderr[-2000:], end="")
    expect(result.returncode == 0, f"the DDP process exited with {result.returncode}: "
                                   f"{(result.stderr.strip().splitlines() or [''])[-1]}")
    figures.update(json.loads(result.stdout.splitlines()[-1]))
    print(f"{figures['backend']}: a step in {figures['step_seconds']:.3f} s, gradients within "
          f"{figures['grad_max_abs_diff']:.3g} of the plain net's (largest {figures['grad_max_abs']:.3g})", flush=True)
    expect(figures["all_reduce_sum"] == 1.0, f"all_reduce of one 1.0 gave {figures['all_reduce_sum']}")
    expect(figures["grad_max_abs_diff"] <= 1e-4 * figures["grad_max_abs"],
           "DDP's gradients differ from the plain net's")


DDP_CHILD = "--ddp-child"  # the ddp stage starts this script again with it


def ddp_child(job: str) -> None:
    """The ddp stage's process: join the group from torchrun's variables, run two DDP steps and one plain, print
    the figures as a JSON line."""
    import torch.distributed as dist
    job = json.loads(job)
    device = torch.device(job["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    net = random_generator(*job["net"])[0].to(device)
    plain = copy.deepcopy(net)
    x = (torch.rand(2, 3, job["crop"], job["crop"], generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index or 0] if device.type == "cuda"
                                                            else None)
        seconds = []
        for _ in range(2):  # the first builds cuDNN's plans and NCCL's communicator
            started = time.perf_counter()
            wrapped.zero_grad()
            wrapped(x).abs().mean().backward()
            sync(device)
            seconds.append(time.perf_counter() - started)
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        figures = {"backend": backend, "world_size": dist.get_world_size(), "first_step_seconds": seconds[0],
                   "step_seconds": seconds[1], "all_reduce_sum": float(total)}
    finally:
        dist.destroy_process_group()
    plain(x).abs().mean().backward()
    pairs = list(zip(net.parameters(), plain.parameters()))
    figures["grad_max_abs_diff"] = max(float((a.grad - b.grad).abs().max()) for a, b in pairs)
    figures["grad_max_abs"] = max(float(b.grad.abs().max()) for _, b in pairs)
    print(json.dumps(figures))


@stage("end-to-end", 90, "benchmarks/gpu_apply.py's pipeline figure: decode, translate, encode a generated clip "
                         "at the frame size, frames/s (needs PyAV)")
def end_to_end(c: Check, figures: dict) -> None:
    needs_pyav()
    from gpu_apply import measure_pipeline
    width, height = c.sizes.frame
    measure_pipeline(argparse.Namespace(frames=c.sizes.pipeline_frames), figures, c.translator("teacher"), width,
                     height)
    if c.sizes.frame == (1920, 1080) and c.sizes.teacher == (9, 64) and c.cuda:
        figures.update(target_fps=TARGET_FPS, target_met=figures["end_to_end_fps"] >= TARGET_FPS)


# ---------------------------------------------------------------- running them

class Results:
    """results.json: the machine, the options, and every stage's {status, seconds, figures, error};
    written atomically (a temporary file renamed over it) at each change."""

    def __init__(self, path: Path, machine: dict, options: dict, names: list[str]):
        self.path = path
        self.data = {"machine": machine, "options": options, "failed": [], "finished": False,
                     "stages": {name: {"status": "pending", "seconds": 0.0, "figures": {}, "error": None}
                                for name in names}}
        self.save()

    def save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(temporary, self.path)


@contextlib.contextmanager
def time_limit(seconds: float):
    """OutOfTime in this (the main) thread once `seconds` pass. It lands between Python steps: a call stuck
    in C (a hung collective) runs on until the device tool's limit, and results.json names it running."""
    def expire(signum, frame):
        raise OutOfTime(f"over its {seconds:.0f} s budget")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_stages(check: Check, results: Results, deadline: float, fail: str | None = None) -> None:
    """Every stage in results, in order, each under its budget; a failure is recorded and the next runs."""
    for name, entry in results.data["stages"].items():
        left = deadline - time.monotonic()
        print(f"\n== {name}: {STAGES[name].summary}", flush=True)
        if left < MIN_STAGE_SECONDS:
            entry.update(status="skipped", error=f"out of time: {left:.0f} s of --budget left")
        else:
            entry["status"] = "running"
            results.save()
            started, cudnn = time.perf_counter(), (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
            try:
                with time_limit(min(STAGES[name].budget, left)):
                    if name == fail:
                        raise CheckFailed("made to fail by --fail")
                    STAGES[name].run(check, entry["figures"])
                entry["status"] = "passed"
            except Skipped as why:
                entry.update(status="skipped", error=str(why))
            except Exception as error:  # noqa: BLE001 - recorded with its traceback; the next stage still runs
                entry.update(status="failed", error=f"{type(error).__name__}: {error}",
                             traceback=traceback.format_exc())
                results.data["failed"].append(name)
                traceback.print_exc()
            finally:
                entry["seconds"] = round(time.perf_counter() - started, 2)
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn  # training sets them
                release_memory(check.device)
        results.save()
        print(f"== {name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f": {entry['error']}" if entry["error"] else ""), flush=True)


def describe_machine(device: torch.device) -> dict:
    machine = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               "cpu": cpu_description(), "cpu_cores": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                       gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                       tf32_convolutions=torch.backends.cudnn.allow_tf32)
    try:
        import av
        machine["pyav"] = av.__version__
    except ImportError:
        machine["pyav"] = None
    return machine


def parse_args(argv=None) -> argparse.Namespace:
    stages = "\n".join(f"  {s.name:<12} {s.summary} (budget {s.budget:.0f} s)" for s in STAGES.values())
    parser = argparse.ArgumentParser(description=__doc__, epilog=f"stages, in order:\n{stages}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=lambda text: [name for name in text.split(",") if name],
                        default=list(STAGES), help="comma-separated stages to run (default: all)")
    parser.add_argument("--out", type=Path, help="folder for results.json and logs (default: $OUT, else "
                                                 "./gpu_check_results)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, on the CPU unless --device says "
                                                               "otherwise: runs in seconds")
    parser.add_argument("--device", default="auto", help="auto (cuda; cpu with --dry-run), cuda, cuda:N or cpu")
    parser.add_argument("--student", type=Path, help="a distilled student's model file for the apply stage "
                                                     "(default: random weights of the default student)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value in the train and resume stages; repeatable")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all stages (default 480: 8 minutes)")
    parser.add_argument("--fail", metavar="STAGE", help="make STAGE fail at its start (tests the runner)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.stages + [args.fail or "apply"] if name not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    if any("=" not in setting for setting in args.settings):
        parser.error("--set takes SECTION.KEY=VALUE")
    spec = args.device if args.device != "auto" else ("cpu" if args.dry_run else "cuda")
    args.device = torch.device(spec)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --dry-run runs the stages at tiny sizes on the CPU")
    if args.device.type != "cuda" and not args.dry_run:
        parser.error("the full sizes need a GPU; add --dry-run for tiny sizes on the CPU")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("gpu_check_results"))
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(args.device)
    print("\n".join(f"{key}: {value}" for key, value in machine.items()), flush=True)
    deadline = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        work = Path(scratch)
        os.environ["VIDCYCLE_HOME"] = str(work / "home")  # the store and caches of this run alone
        check = Check(args.device, DRY_RUN if args.dry_run else Sizes(), work, out, args.student,
                      dict(setting.split("=", 1) for setting in args.settings))
        options = {"stages": args.stages, "dry_run": args.dry_run, "budget_s": args.budget, "settings": check.settings,
                   "student": str(args.student) if args.student else None, "argv": sys.argv[1:]}
        results = Results(out / "results.json", machine, options, [name for name in STAGES if name in args.stages])
        try:
            run_stages(check, results, deadline, args.fail)
            results.data["finished"] = True
        finally:
            results.save()
    print(f"\n{'stage':<12} {'status':<8} {'seconds':>8}")
    for name, entry in results.data["stages"].items():
        print(f"{name:<12} {entry['status']:<8} {entry['seconds']:>8.1f}  {entry['error'] or ''}"[:160])
    failed = results.data["failed"]
    print(f"results: {results.path}" + (f"; FAILED: {', '.join(failed)}" if failed else "; no stage failed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(ddp_child(sys.argv[2]) if sys.argv[1:2] == [DDP_CHILD] else main())
