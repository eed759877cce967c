"""Training data: the unpaired dataset, the one-domain dataset distillation uses, their loader, and what a
run trains and shows samples on.

`UnpairedDataset` draws X and Y independently and augments as the paper does
(resize to the load size, random crop, random horizontal flip, values in
[-1, 1]); `FrameDataset` gives the same views of one domain's frames. Frames
come from the frame cache (vidcycle.training.framecache).
"""

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from vidcycle.errors import TrainingError
from vidcycle.media.images import IMAGE_SUFFIXES, read_frame_file, read_rgb, resize_for_training
from vidcycle.models.frames import frames_to_batch
from vidcycle.training.distributed import Distributed, loader_workers
from vidcycle.training.framecache import FrameItem, FrameSet, SamplingConfig, default_cache_dir, gather_frames

SAMPLE_COLUMNS = 4  # held-out frames per domain in the sample grids


def raise_if_empty(x: FrameSet, y: FrameSet) -> None:
    """Raise TrainingError naming the domain, its inputs and why, when a domain has no usable frames."""
    for name, frames in (("x", x), ("y", y)):
        if not frames.items:
            raise TrainingError(no_frames_message(f"{name}_inputs (--{name})", frames))


def no_frames_message(flag: str, frames: FrameSet) -> str:
    """Why a set of inputs gave no usable frames, naming the flag and its inputs."""
    where = ", ".join(str(p) for p in frames.inputs) or "(no inputs)"
    if frames.failures:
        shown = "; ".join(f"{p.name}: {why}" for p, why in frames.failures[:3])
        more = f" and {len(frames.failures) - 3} more" if len(frames.failures) > 3 else ""
        why = f"all {len(frames.failures)} media files failed ({shown}{more})"
    else:
        why = (f"no videos or images found (images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
               f"videos: anything PyAV opens, e.g. .mp4 .mov .mkv .webm)")
    return f"{flag} {where}: no usable frames: {why}"


# ---------------------------------------------------------------- the datasets

class FrameViews(torch.utils.data.Dataset):
    """The views a dataset gives of a frame: resized to the load size, a random crop, a random flip.

    The epoch lives in shared memory, so set_epoch reaches persistent DataLoader workers too.
    """

    def __init__(self, load_size: int, crop_size: int, flip: bool, seed: int, keep_aspect: bool):
        if crop_size > load_size:
            raise TrainingError(f"crop size {crop_size} is larger than load size {load_size}")
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        self.seed, self.keep_aspect = seed, keep_aspect
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def _load(self, item: FrameItem) -> np.ndarray:
        """Read and resize to load size x load size (the reference's resize; cached frames already are)."""
        if item.clip_index is not None:
            rgb = read_frame_file(item.path)
        else:
            reduce = 1
            if item.size is not None and item.path.suffix.lower() in (".jpg", ".jpeg"):
                # Big photos decode at 1/2..1/8 scale while both sides stay >= the load size (+8: the
                # probed size is rounded up to a multiple of 8).
                while reduce < 8 and min(item.size) // (reduce * 2) >= self.load_size + 8:
                    reduce *= 2
            rgb = read_rgb(item.path, reduce)
        return resize_for_training(rgb, self.load_size, self.keep_aspect)

    def _draw_view(self, rng, shape) -> tuple[int, int, bool]:
        height, width = shape[:2]
        top = int(rng.integers(height - self.crop_size + 1))
        left = int(rng.integers(width - self.crop_size + 1))
        flipped = bool(self.flip and rng.random() < 0.5)
        return top, left, flipped

    def _to_tensor(self, image: np.ndarray, view, rng=None) -> torch.Tensor:
        top, left, flipped = view if view is not None else self._draw_view(rng, image.shape)
        crop = image[top:top + self.crop_size, left:left + self.crop_size]
        crop = cv2.flip(crop, 1) if flipped else np.ascontiguousarray(crop)  # cv2.flip: ~70x a numpy copy
        frame = torch.from_numpy(crop)
        return frames_to_batch(frame[None], torch.float32)[0]


class FrameDataset(FrameViews):
    """One domain's frames. Item i is a view of frame i drawn from (seed, view, i) alone, where the view
    is the epoch, or with `views` the epoch modulo `views`: each frame then has that many distinct
    views, which come back every `views` epochs (so what is computed from a view can be kept)."""

    def __init__(self, frames: FrameSet, load_size: int, crop_size: int, flip: bool = True, seed: int = 0,
                 keep_aspect: bool = False, views: int = 0):
        super().__init__(load_size, crop_size, flip, seed, keep_aspect)
        self.items, self.views = list(frames.items), views

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        view = self.epoch % self.views if self.views else self.epoch
        rng = np.random.default_rng([self.seed, view, int(index)])
        return {"x": self._to_tensor(self._load(self.items[int(index)]), None, rng), "x_index": int(index),
                "view": view}


class UnpairedDataset(FrameViews):
    """X and Y frames drawn independently, augmented as the paper does.

    Item i pairs X frame i % len(x) with a Y frame drawn at random; the draw,
    the crops and the flips depend only on (seed, epoch, i), so runs repeat
    exactly and DDP ranks (which see different i) differ. Like the reference
    unaligned dataset, the length is max(len(x), len(y)).
    """

    def __init__(self, x: FrameSet, y: FrameSet, load_size: int, crop_size: int, flip: bool = True,
                 seed: int = 0, temporal: bool = False, keep_aspect: bool = False):
        if not x.items or not y.items:
            raise_if_empty(x, y)
        super().__init__(load_size, crop_size, flip, seed, keep_aspect)
        self.x, self.y = list(x.items), list(y.items)
        self.temporal = temporal
        self._x_next = _true_neighbours(self.x)

    def __len__(self) -> int:
        return max(len(self.x), len(self.y))

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        x_index = int(index) % len(self.x)
        y_index = int(rng.integers(len(self.y)))
        x_image = self._load(self.x[x_index])
        x_view = self._draw_view(rng, x_image.shape)
        sample = {"x": self._to_tensor(x_image, x_view),
                  "y": self._to_tensor(self._load(self.y[y_index]), None, rng),
                  "x_index": x_index, "y_index": y_index}
        if self.temporal:
            neighbour = self._x_next[x_index]
            if neighbour is None:
                sample["x_next"], sample["has_next"] = sample["x"].clone(), torch.tensor(False)
            else:
                sample["x_next"] = self._to_tensor(self._load(neighbour), x_view)
                sample["has_next"] = torch.tensor(True)
        return sample


# ---------------------------------------------------------------- the loader

def _true_neighbours(items: list[FrameItem]) -> list[FrameItem | None]:
    """For each frame, the decoded frame right after it in its clip: its partner, or the next kept
    frame when that is the very next one; None for photos, a clip's last frame, and frames whose
    successor was not kept (a pair seconds apart would teach motion, not consistency)."""
    following = {(item.source, item.clip_index): item for item in items if item.clip_index is not None}
    neighbours = []
    for item in items:
        after = following.get((item.source, item.clip_index + 1)) if item.clip_index is not None else None
        if item.partner is not None:
            neighbours.append(replace(item, path=item.partner, partner=None))
        elif after is not None and (item.frame_index is None or after.frame_index == item.frame_index + 1):
            neighbours.append(after)
        else:
            neighbours.append(None)
    return neighbours


def make_loader(dataset: FrameViews, batch_size: int, workers: int, shuffle: bool = True,
                distributed: bool = False, seed: int = 0, drop_last: bool = True):
    """A DataLoader whose order is a function of (seed, epoch): call set_loader_epoch before each epoch.

    A DistributedSampler shards the data (one shard per rank) when distributed,
    and with one replica otherwise, so resuming at an epoch repeats its order.
    Workers are persistent, and forked now, while this process is small: forked at
    the first batch, after the networks and the first sample grid, a worker cost the
    first step 115 thousand more page faults and 1.3 s on a 2-core VM (copy-on-write
    of the pages the trainer then wrote, it seems); what they fetch before the first
    epoch starts is dropped. Memory is pinned when CUDA is available. Raises
    TrainingError when the data cannot fill a single batch.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    if drop_last and len(sampler) < batch_size:
        raise TrainingError(f"batch size {batch_size} is larger than the {len(sampler)} samples per process "
                            f"({len(dataset)} in all); lower optim.batch_size or add frames")
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                        drop_last=drop_last, worker_init_fn=_worker_init if workers > 0 else None,
                        prefetch_factor=4 if workers > 0 else None)
    if workers > 0:
        iter(loader)  # the persistent workers start; each epoch's iter() resets them
    return loader


def set_loader_epoch(loader, epoch: int) -> None:
    """Set the epoch on the loader's sampler and dataset (before iterating that epoch)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def _worker_init(_worker_id: int) -> None:
    # Each worker is one process doing one image at a time; threads inside it only oversubscribe.
    # (Not cv2.setNumThreads: in a forked child it waits forever for the parent's pool threads.)
    torch.set_num_threads(1)




# ---------------------------------------------------------------- a run's data

@dataclass
class RunData:
    loader: object            # DataLoader of {"x", "y"[, "x_next", "has_next"]} batches
    held_x: torch.Tensor      # float NCHW held-out frames for the sample grids
    held_y: torch.Tensor
    counts: dict              # usable frames per domain
    failures: list            # (file, reason) of skipped media
    kid_x: torch.Tensor | None = None   # frames held out to score KID at checkpoints (when asked)
    kid_y: torch.Tensor | None = None


def run_data(recipe, record: dict, workers: int | None, device: torch.device, dist: Distributed,
             progress=None, kid_frames: int = 0) -> RunData:
    """Gather both domains (rank 0 fills the frame cache first), hold out sample frames (and `kid_frames`
    per domain to score KID on), build the loader.

    Raises TrainingError when a domain has no usable frames.
    """
    data = recipe.data
    # The temporal loss needs each frame's true successor, which rate or cap sampling may skip.
    sampling = replace(SamplingConfig.from_data_config(data), partners=recipe.loss.temporal > 0)
    cache_dir = Path(record.get("cache_dir") or default_cache_dir())
    sets = {}
    for turn in (True, False):  # rank 0 first; the other ranks then only read the cache
        if dist.main == turn:
            for domain in ("x", "y"):
                shown = progress if dist.main else None
                sets[domain] = gather_frames(record[f"{domain}_inputs"], sampling, cache_dir, shown,
                                             label=f"frames {domain}")
        dist.wait_for_cache()
    raise_if_empty(sets["x"], sets["y"])
    train_x, held_x = hold_out(sets["x"], SAMPLE_COLUMNS)
    train_y, held_y = hold_out(sets["y"], SAMPLE_COLUMNS)
    kid_x = kid_y = None
    if kid_frames:
        train_x, kid_items_x = hold_out(train_x, kid_frames)
        train_y, kid_items_y = hold_out(train_y, kid_frames)
        kid_x, kid_y = center_batch(kid_items_x, data), center_batch(kid_items_y, data)
    dataset = UnpairedDataset(train_x, train_y, data.load_size, data.crop_size, data.flip, seed=recipe.seed,
                              temporal=recipe.loss.temporal > 0, keep_aspect=data.keep_aspect)
    loader = make_loader(dataset, recipe.optim.batch_size, loader_workers(workers, device, dist.env),
                         shuffle=True, distributed=dist.active, seed=recipe.seed)
    return RunData(loader, center_batch(held_x, data), center_batch(held_y, data),
                   {"x": len(sets["x"]), "y": len(sets["y"])}, sets["x"].failures + sets["y"].failures, kid_x, kid_y)


def hold_out(frames: FrameSet, count: int, lend: bool = True):
    """The set left for training, and `count` frames for the sample grids.

    With at least 5x `count` frames, `count` evenly spaced ones are taken out of
    training so the grids show unseen frames; smaller sets lend their first ones,
    unless `lend` is False: then they are taken out all the same.
    """
    items = list(frames.items)
    if len(items) < 5 * count and lend:
        return frames, items[:count]
    picks = sorted(set(np.linspace(0, len(items) - 1, count).round().astype(int).tolist()))
    held = [items[i] for i in picks]
    return replace(frames, items=[item for i, item in enumerate(items) if i not in set(picks)]), held


def center_batch(items, data) -> torch.Tensor:
    """Resize as training does and take the centre crop: the training view without randomness."""
    crops, size = [], data.crop_size
    for item in items:
        rgb = resize_for_training(read_rgb(item.path), data.load_size, data.keep_aspect)
        top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
        crops.append(rgb[top:top + size, left:left + size])
    return frames_to_batch(torch.from_numpy(np.stack(crops)), torch.float32)
