"""Quality without pairs: KID and FID of translations against target-domain footage, on Inception-v3
features, beside the untranslated inputs and Reinhard colour transfer, and a contact sheet to look at.

The features are torch-fidelity's Inception-v3 (the TensorFlow FID graph's weights, ported; pool3,
2048 values per image, the images resized to 299 x 299 as that graph does), the ones published FID
and KID figures use; its estimators compute both numbers. The weights come once into the store
(`$VIDCYCLE_HOME/features/`), their sha256 checked against the prefix their publisher names the
file by, or from a local copy (`features=FILE`), which is never downloaded over.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from vidcycle.errors import DownloadError, FeaturesMissing, MediaError, ModelError
from vidcycle.files import scratch_path, walk_media
from vidcycle.media.charts import image_grid, write_png
from vidcycle.media.images import IMAGE_SUFFIXES, read_image
from vidcycle.media.video import VIDEO_SUFFIXES, is_video_path, iter_frames, probe
from vidcycle.models.modelfile import file_sha256
from vidcycle.models.store import fetch, store_home
from vidcycle.progress import bar
from vidcycle.quality.evaluation import LabAccumulator, reinhard
from vidcycle.runtime.device import pick_device
from vidcycle.runtime.translator import load_model

log = logging.getLogger("vidcycle")

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # the file's name carries its sha256's first digits (torch.hub's rule)
FRAMES_PER_CLIP = 50   # a clip gives at most this many evenly spaced frames
KID_SUBSETS = 100      # torch-fidelity's and the KID paper's defaults: 100 subsets of up to 1000
KID_SUBSET_SIZE = 1000
SHEET_COLUMNS = 8


def features_path() -> Path:
    return store_home() / "features" / WEIGHTS_FILE


def fetch_weights(url: str = WEIGHTS_URL, sha256_prefix: str = WEIGHTS_SHA256_PREFIX, progress=None) -> Path:
    """Download the Inception weights into the store, checked; a failed check leaves nothing there.
    Raises DownloadError."""
    target = features_path()
    with scratch_path(target) as download:
        digest = fetch(url, download, None, progress)
        if not digest.startswith(sha256_prefix.lower()):
            raise DownloadError(f"{url}: sha256 {digest[:16]}... does not start with the published "
                                f"{sha256_prefix}; the file is damaged or was replaced, so it was not stored")
        os.replace(download, target)
    return target


def find_weights(features=None, fetch_missing: bool = True, url: str = WEIGHTS_URL,
                 sha256_prefix: str = WEIGHTS_SHA256_PREFIX, progress=None) -> tuple[Path, str]:
    """(weights file, what to call them in a report). A given file is used as it is; otherwise the store's,
    fetched first when missing. Raises FeaturesMissing (one line: the exact file and where it goes),
    MediaError for a given file that is not there."""
    if features is not None:
        path = Path(features)
        if not path.is_file():
            raise MediaError(f"{path}: no such weights file (--features takes a local copy of {WEIGHTS_FILE})")
        return path, describe(path, sha256_prefix)
    path = features_path()
    if not path.exists():
        if not fetch_missing:
            raise FeaturesMissing(_missing_message(path, "not fetched"))
        try:
            fetch_weights(url, sha256_prefix, progress)
        except DownloadError as error:
            raise FeaturesMissing(_missing_message(path, str(error).split(": ", 1)[-1])) from error
    return path, describe(path, sha256_prefix)


def _missing_message(path: Path, reason: str) -> str:
    return (f"the Inception weights for KID/FID are missing and were not fetched ({reason}); put {WEIGHTS_URL} "
            f"at {path}, or pass --features FILE")


def describe(path: Path, sha256_prefix: str = WEIGHTS_SHA256_PREFIX) -> str:
    digest = file_sha256(path)
    if digest.startswith(sha256_prefix):
        return f"Inception-v3 pool3 (torch-fidelity, {WEIGHTS_FILE}): comparable with published FID/KID"
    return (f"Inception-v3 architecture with the weights in {path.name} (sha256 {digest[:12]}...), not the "
            f"published ones: figures are not comparable with published FID/KID")


class InceptionFeatures:
    """2048 pool3 features per uint8 RGB image of any size."""

    def __init__(self, weights: Path, device: str = "cpu"):
        try:  # tensors only: torch-fidelity itself unpickles the file without restrictions
            torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 (any failure to read means: not a weights file)
            raise ModelError(f"{weights}: not a plain Inception-v3 state dict ({str(error).splitlines()[0]})") from error
        # lazy, as in kid() and fid(): torch-fidelity imports torchvision's models and torch._dynamo
        # (1.3 s), which every training run without --kid would otherwise pay at its start
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(weights))
        except RuntimeError as error:
            raise ModelError(f"{weights}: weights do not fit Inception-v3 ({str(error).splitlines()[0]})") from error
        self.device = torch.device(device)
        self.net.to(self.device)

    @torch.no_grad()
    def one(self, image: np.ndarray) -> np.ndarray:
        """[2048] float64 for one HxWx3 image (images need not share a size)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(self.device)
        return self.net(tensor)[0][0].double().cpu().numpy()  # the first (only) feature, of the one image

    def __call__(self, images) -> np.ndarray:
        return np.stack([self.one(image) for image in images])


# ---------------------------------------------------------------- the estimators

def kid(real: np.ndarray, fake: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 2020) -> tuple[float, float, int]:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
    (x.y / d + 1)^3, over `subsets` random subsets of min(subset_size, both counts) images each;
    (mean, standard deviation, subset size)."""
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise MediaError("KID needs at least 2 images on each side")
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    result = kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=subsets,
                                    kid_subset_size=size, rng_seed=seed, verbose=False)
    return result[KEY_METRIC_KID_MEAN], result[KEY_METRIC_KID_STD], size


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID (Heusel et al. 2017): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of the features'
    Gaussian fits."""
    if min(len(real), len(fake)) < 2:
        raise MediaError("FID needs at least 2 images on each side")
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (real, fake)]
    return fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID]


# ---------------------------------------------------------------- images from folders of photos and clips

def media_files(inputs) -> list[Path]:
    """Photos and clips of `inputs` (files, or folders searched recursively). Raises MediaError when none."""
    files = []
    for item in map(Path, inputs):
        files += sorted(walk_media(item, IMAGE_SUFFIXES | VIDEO_SUFFIXES)) if item.is_dir() else [item]
    if not files:
        raise MediaError(f"{', '.join(map(str, inputs))}: no photos or clips")
    return files


def iter_images(files, frames_per_clip: int = FRAMES_PER_CLIP, progress=None, label: str = "images"):
    """uint8 RGB images, one at a time: every photo and, from each clip, up to `frames_per_clip` evenly
    spaced frames."""
    with bar(progress, label, len(files), "file") as counter:
        for path in files:
            yield from _clip_frames(path, frames_per_clip) if is_video_path(path) else [read_image(path).rgb]
            counter.update(1)


def _clip_frames(path: Path, count: int):
    step = max(1, (probe(path).frames or count) // count)
    taken = (frame.rgb for frame in iter_frames(path, wanted=lambda index, pts, base: index % step == 0))
    for _, rgb in zip(range(count), taken):
        yield rgb


# ---------------------------------------------------------------- the report

@dataclass
class FidelityScores:
    kid_mean: float
    kid_std: float
    fid: float

    def as_dict(self) -> dict:
        return {"kid_mean": self.kid_mean, "kid_std": self.kid_std, "fid": self.fid}


@dataclass
class FidelityReport:
    model: str
    x_images: int
    y_images: int
    features: str                      # which features (and whether comparable with published figures)
    kid_subset_size: int
    methods: dict = field(default_factory=dict)   # "model" / "identity" / "reinhard" -> FidelityScores
    sheet: str | None = None

    def as_dict(self) -> dict:
        return {"model": self.model, "x_images": self.x_images, "y_images": self.y_images,
                "features": self.features, "kid_subsets": KID_SUBSETS, "kid_subset_size": self.kid_subset_size,
                "metrics": {name: s.as_dict() for name, s in self.methods.items()}, "contact_sheet": self.sheet}


def evaluate_unpaired(model: str, x_inputs, y_inputs, features=None, sheet=None, device="auto",
                      precision="auto", progress=None, max_memory=None, fetch_missing: bool = True,
                      frames_per_clip: int = FRAMES_PER_CLIP) -> FidelityReport:
    """KID and FID against Y of the model's translations of X, of X itself and of X colour-matched to
    Y (Reinhard), on Inception features; with `sheet`, a contact sheet PNG of inputs and outputs.

    The weights are found (or fetched) and the model loaded before any image is read, so a missing
    piece stops the run at its start. Raises FeaturesMissing, MediaError, ModelError, DownloadError.
    """

    weights, described = find_weights(features, fetch_missing, progress=progress)
    translator = load_model(model, device, precision, max_memory=max_memory)
    extractor = InceptionFeatures(weights, str(pick_device(device)))
    x_files, y_files = media_files(x_inputs), media_files(y_inputs)
    real, colours = [], LabAccumulator()
    for image in iter_images(y_files, frames_per_clip, progress, "images y"):
        real.append(extractor.one(image))
        colours.add(image)
    target = colours.stats()
    fakes, thumbnails = {"model": [], "identity": [], "reinhard": []}, []
    for image in iter_images(x_files, frames_per_clip, progress, "images x"):
        versions = {"model": translator.translate(image), "identity": image, "reinhard": reinhard(image, target)}
        for name, version in versions.items():
            fakes[name].append(extractor.one(version))
        thumbnails.append([thumbnail(versions[name]) for name in ("identity", "model", "reinhard")])
    real = np.stack(real)
    report = FidelityReport(model, len(thumbnails), len(real), described, 0)
    for name, features_of in fakes.items():
        fake = np.stack(features_of)
        mean, std, size = kid(real, fake)
        report.methods[name] = FidelityScores(mean, std, fid(real, fake))
        report.kid_subset_size = size
    if sheet is not None:
        write_png(Path(sheet), contact_sheet(thumbnails, model))
        report.sheet = str(sheet)
    return report


THUMBNAIL_WIDTH = 160


def thumbnail(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    size = (THUMBNAIL_WIDTH, max(1, round(THUMBNAIL_WIDTH * height / width)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def contact_sheet(thumbnails: list, model: str) -> np.ndarray:
    """Up to SHEET_COLUMNS evenly spaced inputs over their translations and their Reinhard matches
    (`thumbnails`: [input, translation, Reinhard] per image), each at the first pick's shape."""
    picks = np.linspace(0, len(thumbnails) - 1, min(SHEET_COLUMNS, len(thumbnails))).round().astype(int)
    height, width = thumbnails[picks[0]][0].shape[:2]

    def row(column):
        return np.stack([cv2.resize(thumbnails[i][column], (width, height), interpolation=cv2.INTER_AREA)
                         for i in picks])
    return image_grid([("input", row(0)), (model, row(1)), ("reinhard", row(2))],
                      title=f"{model}: inputs, translations, Reinhard colour transfer")
