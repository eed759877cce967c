"""Training-data throughput: frame extraction into the cache, and DataLoader samples/s (issue 5's figures).

    python benchmarks/loader_speed.py [--seconds 8] [--workers 0 1 2] [--clip-size 1280x720]

Makes a 720p clip and a few camera-sized JPEG photos per domain in a
temporary folder, extracts the clip's frames the way `vidcycle train` does
(recipe sampling; frames cached at load size x load size), then times
UnpairedDataset + make_loader at the 128-px recipe (load 143, crop 128) and
at the paper's 286/256. One sample is one X and one Y image, augmented.
`benchmark_loader(...)` is importable (benchmarks/train_speed.py uses it).
"""

import argparse
import fractions
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vidcycle.training.data import UnpairedDataset, make_loader, set_loader_epoch
from vidcycle.training.framecache import SamplingConfig, gather_frames
from vidcycle.training.recipe import load_recipe


def make_footage(folder: Path, size=(1280, 720), frames=48, photos=4, photo_size=(2400, 1600), seed=0) -> Path:
    """A clip of slowly panning smooth texture (natural-looking to JPEG and H.264) and some photos."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    field = cv2.resize(rng.integers(0, 255, (height // 24, width // 12, 3), dtype=np.uint8), (width * 2, height),
                       interpolation=cv2.INTER_CUBIC)
    field = np.clip(field.astype(np.int16) + rng.integers(-6, 6, field.shape), 0, 255).astype(np.uint8)
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"preset": "ultrafast", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = fractions.Fraction(1, 24)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(field[:, 8 * i:8 * i + width]), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for i in range(photos):
        photo = cv2.resize(rng.integers(0, 255, (photo_size[1] // 40, photo_size[0] // 40, 3), dtype=np.uint8),
                           photo_size, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"photo{i}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


def benchmark_loader(x_inputs, y_inputs, load_size: int, crop_size: int, workers: int = 2, batch_size: int = 1,
                     seconds: float = 8.0, cache_dir=None, temporal: bool = False) -> dict:
    """Samples per second the training loader delivers (after worker start-up), with extraction time.

    The frames are gathered with the sampling a recipe at this load size uses
    (SamplingConfig.from_data_config), so the figure is what training would see.
    """
    recipe = load_recipe(overrides={"data.load_size": load_size, "data.crop_size": crop_size})
    sampling = SamplingConfig.from_data_config(recipe.data)
    cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="vidcycle-bench-cache-"))
    start = time.perf_counter()
    x = gather_frames(x_inputs, sampling, cache_dir)
    y = gather_frames(y_inputs, sampling, cache_dir)
    gather_s = time.perf_counter() - start
    dataset = UnpairedDataset(x, y, load_size, crop_size, flip=True, temporal=temporal)
    loader = make_loader(dataset, batch_size, workers)
    samples, epoch, first_batch_s = 0, 0, None
    start = time.perf_counter()
    while True:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            if first_batch_s is None:  # worker start-up and the first images are not throughput
                first_batch_s = time.perf_counter() - start
                start = time.perf_counter()
                continue
            samples += batch["x"].shape[0]
            if time.perf_counter() - start >= seconds:
                elapsed = time.perf_counter() - start
                return {"samples_per_s": samples / elapsed, "samples": samples, "frames": len(x) + len(y),
                        "gather_s": gather_s, "first_batch_s": first_batch_s, "workers": workers,
                        "load_size": load_size, "crop_size": crop_size}
        epoch += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clip-size", default="1280x720")
    parser.add_argument("--train-s-per-it", type=float, default=0.9,
                        help="training seconds per iteration at batch 1, for the ratio column (issue 5 target)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.clip_size.split("x"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    # With workers=0 the float conversion runs on the main process's OpenMP threads; their default
    # spin-waiting made it ~10x slower on this shared machine than OMP_WAIT_POLICY=PASSIVE.
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), OpenCV {cv2.__version__}; "
          f"clip {size[0]}x{size[1]} 48 frames + 4 JPEG photos 2400x1600 per domain")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x_dir, y_dir = make_footage(tmp / "x", size, seed=1), make_footage(tmp / "y", size, seed=2)
        print(f"{'load/crop':>10} {'workers':>7} {'extract s':>9} {'frames':>6} {'samples/s':>9} "
              f"{'x training':>10}")
        for load_size, crop_size in ((143, 128), (286, 256)):
            cache = tmp / f"cache{load_size}"
            for workers in args.workers:
                result = benchmark_loader([x_dir], [y_dir], load_size, crop_size, workers, seconds=args.seconds,
                                          cache_dir=cache)
                ratio = result["samples_per_s"] * args.train_s_per_it
                print(f"{load_size:>4}/{crop_size:<5} {workers:>7} {result['gather_s']:>9.2f} "
                      f"{result['frames']:>6} {result['samples_per_s']:>9.1f} {ratio:>9.0f}x")
        print(f"(extract s: first gather decodes and caches, later rows reuse the cache; "
              f"x training: samples/s times {args.train_s_per_it} s/iteration at batch 1)")


if __name__ == "__main__":
    main()
