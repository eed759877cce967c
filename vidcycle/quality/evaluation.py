"""Translation quality: PSNR, SSIM and Lab colour error against paired ground truth, two classical
baselines on the same images, and the cycle-reconstruction error that needs no pairs.

The metrics themselves are vidcycle.metrics.
Baselines: identity (the input itself) and Reinhard et al. 2001 global colour transfer: each image's
per-channel Lab mean and standard deviation are moved to those of the target domain's training images.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidcycle.errors import MediaError, ModelError
from vidcycle.files import walk_media
from vidcycle.media.images import IMAGE_SUFFIXES, read_image
from vidcycle.media.video import VIDEO_SUFFIXES, is_video_path, iter_frames
from vidcycle.metrics import delta_e, from_lab, psnr, ssim, to_lab
from vidcycle.models.names import reverse_name
from vidcycle.models.store import MODEL_SUFFIX, resolve_model_path
from vidcycle.progress import bar
from vidcycle.runtime.translator import load_model

STATS_FRAME_STEP = 10  # every 10th frame of a training clip counts toward the Reinhard statistics...
STATS_FRAMES_PER_CLIP = 60  # ...up to this many per clip, so one long clip cannot dominate


# ---------------------------------------------------------------- Reinhard colour transfer

@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and standard deviation in CIELAB over every pixel of a set of images."""

    mean: tuple
    std: tuple
    pixels: int


class LabAccumulator:
    """Running Lab sums, so statistics of a large folder need no more memory than one image."""

    def __init__(self):
        self.total = np.zeros(3)
        self.squares = np.zeros(3)
        self.count = 0

    def add(self, rgb: np.ndarray) -> None:
        lab = to_lab(rgb).reshape(-1, 3).astype(np.float64)
        self.total += lab.sum(axis=0)
        self.squares += (lab ** 2).sum(axis=0)
        self.count += lab.shape[0]

    def stats(self) -> LabStats:
        if not self.count:
            raise MediaError("no pixels to take colour statistics from")
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean ** 2, 0))
        return LabStats(tuple(mean.tolist()), tuple(std.tolist()), self.count)


def lab_stats(images) -> LabStats:
    accumulator = LabAccumulator()
    for image in images:
        accumulator.add(image)
    return accumulator.stats()


def reinhard(rgb: np.ndarray, target: LabStats) -> np.ndarray:
    """Move one image's Lab mean and std per channel to the target statistics (Reinhard et al. 2001)."""
    lab = to_lab(rgb)
    source = lab_stats([rgb])
    mean_s, std_s = np.asarray(source.mean, np.float32), np.asarray(source.std, np.float32)
    mean_t, std_t = np.asarray(target.mean, np.float32), np.asarray(target.std, np.float32)
    scale = np.where(std_s > 1e-6, std_t / np.maximum(std_s, 1e-6), 1.0)  # a flat channel only shifts
    return from_lab((lab - mean_s) * scale + mean_t)


def folder_lab_stats(folder, progress=None) -> LabStats:
    """Lab statistics of a folder of target-domain training footage: its photos and, from each clip,
    every STATS_FRAME_STEP-th frame, up to STATS_FRAMES_PER_CLIP. Raises MediaError."""

    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"{folder}: not a folder")
    files = list(walk_media(folder, IMAGE_SUFFIXES | VIDEO_SUFFIXES))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    clips = [p for p in files if is_video_path(p)]
    if not images and not clips:
        raise MediaError(f"{folder}: no images or videos to take target-domain colour statistics from")
    accumulator = LabAccumulator()
    with bar(progress, "colour statistics", len(images) + len(clips), "file") as counter:
        for path in images:
            accumulator.add(read_image(path).rgb)
            counter.update(1)
        for path in clips:
            for taken, frame in enumerate(f for i, f in enumerate(iter_frames(path)) if i % STATS_FRAME_STEP == 0):
                if taken == STATS_FRAMES_PER_CLIP:
                    break
                accumulator.add(frame.rgb)
            counter.update(1)
    return accumulator.stats()


# ---------------------------------------------------------------- evaluating a model

@dataclass
class Scores:
    """Mean of per-image PSNR (dB), SSIM and delta E76 over the evaluated images."""

    psnr: float
    ssim: float
    delta_e: float

    def as_dict(self) -> dict:
        return {"psnr": _finite_or_none(self.psnr), "ssim": self.ssim, "delta_e": self.delta_e}


@dataclass
class CycleScores:
    """F(G(x)) against x: how much of the input survives a round trip through both generators."""

    reverse_model: str
    psnr: float
    ssim: float
    l1: float  # mean absolute difference, 0..255 levels

    def as_dict(self) -> dict:
        return {"reverse_model": self.reverse_model, "psnr": _finite_or_none(self.psnr), "ssim": self.ssim,
                "l1": self.l1}


@dataclass
class EvalReport:
    model: str
    x_dir: str
    images: int
    truth_dir: str | None = None
    methods: dict = field(default_factory=dict)  # "model" / "identity" / "reinhard" -> Scores
    reinhard_stats: str = ""  # where the target statistics came from
    cycle: CycleScores | None = None
    unmatched: list = field(default_factory=list)  # X files without a truth file of the same name

    def margins(self) -> dict:
        """The model's lead over each baseline (positive = model better; delta E: lower is better)."""
        if "model" not in self.methods:
            return {}
        model = self.methods["model"]
        return {name: {"psnr": model.psnr - s.psnr, "ssim": model.ssim - s.ssim, "delta_e": s.delta_e - model.delta_e}
                for name, s in self.methods.items() if name != "model"}

    def as_dict(self) -> dict:
        return {"model": self.model, "x": self.x_dir, "truth": self.truth_dir, "images": self.images,
                "metrics": {name: s.as_dict() for name, s in self.methods.items()},
                "margins": self.margins(), "reinhard_stats": self.reinhard_stats or None,
                "cycle": self.cycle.as_dict() if self.cycle else None, "unmatched": self.unmatched,
                "definitions": {"ssim": "Gaussian 11x11 sigma 1.5, per RGB channel, averaged",
                                "delta_e": "CIE76 in CIELAB (OpenCV float conversion)",
                                "aggregate": "mean over images of per-image values"}}


def default_reverse_model(model: str) -> str | None:
    """The reverse model when it exists, else None: for a store or built-in name, the reverse name in
    the store; for a model file path, the file of the reverse name beside it."""

    path = Path(model)
    if path.suffix == MODEL_SUFFIX or "/" in model or "\\" in model:
        candidate = reverse_name(path.stem)
        sibling = path.with_name(f"{candidate}{MODEL_SUFFIX}") if candidate else None
        return str(sibling) if sibling is not None and sibling.is_file() else None
    candidate = reverse_name(model)
    if candidate is None:
        return None
    try:
        resolve_model_path(candidate)
    except ModelError:
        return None
    return candidate


def evaluate(model: str, x_dir, truth_dir=None, reverse_model: str | None = None, y_train=None,
             device="auto", precision="auto", progress=None, max_memory=None) -> EvalReport:
    """Translate every image of `x_dir` with `model` and score it.

    With `truth_dir` (paired ground truth, matched by file name): PSNR, SSIM and delta E of the model,
    of the identity and of the Reinhard baseline. Reinhard's target statistics come from `y_train`
    (target-domain training footage); without it, from the truth images themselves, an oracle that
    flatters the baseline, and the report says so. With a reverse model: the cycle error F(G(x)) vs x.
    `max_memory` bounds the network's working memory as in apply (large photos run in tiles).
    Raises MediaError (missing, unreadable or mismatched images) and ModelError.
    """

    x_dir = Path(x_dir)
    x_files = _media_files(x_dir, IMAGE_SUFFIXES)
    if not x_files:
        raise MediaError(f"{x_dir}: no images to evaluate (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    pairs, unmatched = _pair_up(x_files, x_dir, Path(truth_dir)) if truth_dir else ([(p, None) for p in x_files], [])
    if truth_dir and not pairs:
        raise MediaError(f"{truth_dir}: no file matches a name in {x_dir}; paired folders need the same file names")
    if reverse_model is None and truth_dir is None:
        raise ModelError(f"without truth images (truth_dir, --truth) only the cycle error can be measured, and no "
                         f"reverse model of "
                         f"'{model}' was found; name one (reverse_model, --reverse-model NAME)")
    forward = load_model(model, device, precision, max_memory=max_memory)
    backward = load_model(reverse_model, device, precision, max_memory=max_memory) if reverse_model else None
    target = None
    report = EvalReport(model=model, x_dir=str(x_dir), images=len(pairs),
                        truth_dir=str(truth_dir) if truth_dir else None, unmatched=unmatched)
    if truth_dir:
        if y_train:
            target, report.reinhard_stats = folder_lab_stats(y_train), f"target-domain training images in {y_train}"
        else:
            target = lab_stats(read_image(t).rgb for _, t in pairs)
            report.reinhard_stats = (f"the truth images in {truth_dir} (oracle: give the target-domain "
                                     f"training images, y_train or --y-train, for the fair baseline)")
    sums = {name: np.zeros(3) for name in (("model", "identity", "reinhard") if truth_dir else ())}
    cycle = np.zeros(3)
    with bar(progress, "eval", len(pairs), "image") as counter:
        for x_path, truth_path in pairs:
            _score_one(x_path, truth_path, forward, backward, target, sums, cycle)
            counter.update(1)
    n = len(pairs)
    report.methods = {name: Scores(*(total / n)) for name, total in sums.items()}
    if backward is not None:
        report.cycle = CycleScores(reverse_model, *(cycle / n))
    return report


def _score_one(x_path: Path, truth_path: Path | None, forward, backward, target, sums: dict,
               cycle: np.ndarray) -> None:
    """Add one image's scores to `sums` (model, identity, Reinhard against the truth) and `cycle`."""
    x = read_image(x_path).rgb
    fake_y = forward.translate(x)
    if truth_path is not None:
        truth = read_image(truth_path).rgb
        if truth.shape != x.shape:
            raise MediaError(f"{truth_path}: size {truth.shape[1]}x{truth.shape[0]} differs from "
                             f"{x_path.name} ({x.shape[1]}x{x.shape[0]}); pairs must be aligned")
        for name, candidate in (("model", fake_y), ("identity", x), ("reinhard", reinhard(x, target))):
            sums[name] += (psnr(candidate, truth), ssim(candidate, truth), delta_e(candidate, truth))
    if backward is not None:
        rec_x = backward.translate(fake_y)
        cycle += (psnr(rec_x, x), ssim(rec_x, x), np.abs(rec_x.astype(np.float64) - x).mean())


def _media_files(folder: Path, suffixes) -> list[Path]:
    if not folder.is_dir():
        raise MediaError(f"{folder}: not a folder")
    return list(walk_media(folder, suffixes, recursive=False))


def _pair_up(x_files, x_dir: Path, truth_dir: Path):
    """Match X files to truth files by name; a different image suffix is allowed (a.png ~ a.jpg)."""
    truth_files = _media_files(truth_dir, IMAGE_SUFFIXES)
    by_name = {p.name: p for p in truth_files}
    by_stem = {}
    for p in truth_files:
        by_stem.setdefault(p.stem, p)
    pairs, unmatched = [], []
    for x in x_files:
        truth = by_name.get(x.name) or by_stem.get(x.stem)
        if truth is None:
            unmatched.append(x.name)
        else:
            pairs.append((x, truth))
    return pairs, unmatched


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None
