"""Flicker benchmark (issue 4): what `vidcycle apply --temporal` buys and costs.

    python benchmarks/flicker.py                      # ~3 min on 2 cores
    python benchmarks/flicker.py --train-steps 300    # + two tiny models trained with/without loss.temporal

Generated clips (samples/make_samples.py scenery, H.264 + AAC, 24 fps): "pan",
an eased camera pan across a wide landscape, and "object", a static camera on
a landscape while a dark animal-sized blob crosses it. Every clip goes through
the real apply path (vidcycle.apply.jobs.translate_video: decode thread with the
blender's flow, network, blend, encoder), and every output is scored by the
real metric (vidcycle.quality.flicker.measure_flicker, the code of `eval-video`).

What flickers, honestly:
- "look + noise": a stand-in generator, not a network: a fixed "winter"
  colour look (smooth, like a trained CycleGAN's output) plus noise redrawn
  every frame: a smooth colour field (a value per 80 px, sigma 8 levels) and
  finer blotches (a value per 8 px, sigma 4 levels). Its noise-free twin gives
  "PSNR vs clean": whether blending moves the output toward the translation
  without flicker.
- "demo-summer2winter": the built-in CycleGAN demo model, when the tree has it.
- with --train-steps N: two tiny CycleGANs trained here on generated summer and
  winter pan clips, the same recipe except loss.temporal (0 vs
  --temporal-weight); the second model's "removed" is against the first's
  per-frame output.
A random-init generator is not used for flicker: its output is pixel-scale
noise that changes with every sub-pixel shift, and after H.264 what remains is
mostly encoder noise, which no blender before the encoder can remove.

Columns: warping error (Lai et al. 2018) of the output and of the source (the
floor), the excess over the floor, the share of the per-frame excess that is
removed, and PSNR against the same model's per-frame output (fidelity: blur
does not pass for consistency). Speed: fps of translate_video on the pan with
a random-init 9-block ngf-64 generator (the reference size), temporal off and
on, alternated, best of --repeats, on CPU. The machine may be shared: speed
figures are noisy.
"""

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `vidcycle apply` sets it, before OpenMP starts

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "samples"))

from make_samples import ambience, make_scene, pan_frames, render, write_clip  # noqa: E402

from vidcycle.apply.jobs import ApplyOptions, translate_video  # noqa: E402
from vidcycle.metrics import psnr  # noqa: E402
from vidcycle.models.modelfile import ModelInfo, save_model  # noqa: E402
from vidcycle.models.nets import GeneratorSpec, build_generator  # noqa: E402
from vidcycle.quality.flicker import measure_flicker  # noqa: E402
from vidcycle.apply.limits import RECOMMENDED_TEMPORAL_STRENGTH  # noqa: E402
from vidcycle.apply.temporal import TemporalBlender  # noqa: E402
from vidcycle.runtime.translator import Translator, load_model  # noqa: E402
from vidcycle.media.video import iter_frames  # noqa: E402

FPS = 24


# ---------------------------------------------------------------- clips

def object_frames(seed: int, size: tuple[int, int], count: int):
    """A static landscape with a dark blob (an animal seen from afar) walking across it, bobbing."""
    width, height = size
    scene = render(make_scene(seed, width / height), "summer", height)[:, :width]
    for i in range(count):
        frame = scene.copy()
        t = i / max(1, count - 1)
        cx = int(-0.1 * width + 1.2 * width * t)
        cy = int(0.72 * height + 0.02 * height * np.sin(12 * t))
        axes = (max(4, width // 14), max(3, height // 16))
        cv2.ellipse(frame, (cx, cy), axes, 0, 0, 360, (70, 45, 30), -1, cv2.LINE_AA)
        cv2.circle(frame, (cx + axes[0], cy - axes[1]), max(2, axes[1] * 2 // 3), (60, 40, 28), -1, cv2.LINE_AA)
        yield frame


def make_clips(folder: Path, size: tuple[int, int], frames: int) -> dict[str, Path]:
    seconds = frames / FPS
    clips = {"pan": (pan_frames(7, "summer", size, seconds, FPS, pan=1.8), 7),
             "object": (object_frames(11, size, frames), 11)}
    paths = {}
    for name, (frame_iter, seed) in clips.items():
        paths[name] = folder / f"{name}.mp4"
        write_clip(paths[name], frame_iter, FPS, ambience(seed, "summer", seconds))
    return paths


# ---------------------------------------------------------------- translators that flicker

class FlickeringLook(torch.nn.Module):
    """Stand-in generator: a fixed 'winter' colour look (a smooth function of the frame, like a trained
    CycleGAN's output) plus per-frame noise: a smooth colour field (a value per 80 px, sigma 8 levels)
    and finer blotches (a value per 8 px, sigma 4 levels), redrawn for every frame from its number."""

    def __init__(self, coarse_sigma=8.0, fine_sigma=4.0):
        super().__init__()
        self.coarse_sigma, self.fine_sigma = coarse_sigma / 127.5, fine_sigma / 127.5
        self.frame_number = 0

    def forward(self, batch):
        gray = batch.mean(dim=1, keepdim=True)
        tint = torch.tensor([0.92, 0.97, 1.08], dtype=batch.dtype).reshape(1, 3, 1, 1)
        look = ((0.55 * gray + 0.45 * batch + 1) * tint - 1 + 0.14)
        height, width = batch.shape[2:]
        noise = []
        for _ in range(batch.shape[0]):
            rng = np.random.default_rng(self.frame_number)
            self.frame_number += 1
            noise.append(_field(rng, width, height, 80, self.coarse_sigma)
                         + _field(rng, width, height, 8, self.fine_sigma))
        noise = torch.from_numpy(np.stack(noise)).permute(0, 3, 1, 2).to(batch.dtype)
        return (look + noise).clamp(-1, 1)


def _field(rng, width, height, cell, sigma):
    if sigma == 0:
        return np.zeros((height, width, 3), np.float32)
    grid = rng.normal(0, sigma, (max(2, height // cell), max(2, width // cell), 3)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def look_translator(noise: bool = True) -> Translator:
    spec = GeneratorSpec(n_blocks=9, ngf=64)  # nominal: the stand-in has no weights
    look = FlickeringLook() if noise else FlickeringLook(0.0, 0.0)
    return Translator(look, ModelInfo(spec=spec, source="stand-in look"), "cpu", "fp32", name="look")


# ---------------------------------------------------------------- measuring

def decode(path: Path) -> np.ndarray:
    return np.stack([frame.rgb for frame in iter_frames(path)])


def apply(src: Path, dst: Path, translator, temporal: float) -> float:
    """Seconds for translate_video (decode, network, blender, encode), output written to dst."""
    start = time.perf_counter()
    translate_video(src, dst, translator, ApplyOptions(temporal=temporal, overwrite=True))
    return time.perf_counter() - start


def flicker_rows(clips, out: Path, strengths):
    """The stand-in look with per-frame noise, per-frame and at each strength, plus its noise-free twin."""
    rows = []
    for name, src in clips.items():
        clean_path = out / f"{name}_look_clean.mp4"
        apply(src, clean_path, look_translator(noise=False), 0.0)
        clean = decode(clean_path)
        rows += _setting_rows(name, "look + noise", src, out, lambda: look_translator(), strengths, clean)
    return rows


def demo_rows(clips, out: Path, strengths, precision):
    """The built-in demo summer->winter CycleGAN (trained by vidcycle itself), if this tree ships it."""
    from vidcycle.models.store import available_models
    if "demo-summer2winter" not in available_models():
        print("(no built-in demo-summer2winter model: its rows are skipped)", file=sys.stderr)
        return []
    rows = []
    for name, src in clips.items():
        rows += _setting_rows(name, "demo-summer2winter", src, out,
                              lambda: load_model("demo-summer2winter", device="cpu", precision=precision), strengths)
    return rows


def _setting_rows(clip: str, model: str, src: Path, out: Path, make_translator, strengths, clean=None):
    rows, base, per_frame = [], None, None
    for strength in [0.0, *strengths]:
        dst = out / f"{clip}_{model.split()[0]}_t{strength:g}.mp4"
        apply(src, dst, make_translator(), strength)
        report, frames = measure_flicker(src, dst), decode(dst)
        if base is None:
            base, per_frame = report.error, frames
        label = "per-frame" if strength == 0 else f"--temporal {strength:g}"
        rows.append(Row(clip, model, label, report, base, psnr(frames, per_frame),
                        None if clean is None else psnr(frames, clean)))
        rows[-1].print()
    return rows


def trained_rows(clips, out: Path, steps: int, weight: float, strengths, precision):
    """Two tiny models trained on the generated footage, the same recipe but for loss.temporal."""
    try:
        models = train_pair(out, steps, weight)
    except ImportError as error:
        print(f"(no trainer: trained-model rows skipped: {error})", file=sys.stderr)
        return []
    rows = []
    for name, src in clips.items():
        base, per_frame = None, None
        plain_label, plain_path = next(iter(models.items()))
        settings = [(label, path, 0.0) for label, path in models.items()] + \
            [(plain_label, plain_path, strength) for strength in strengths]
        for label, model_path, temporal in settings:
            dst = out / f"{name}_{label.replace(' ', '_')}_t{temporal:g}.mp4"
            apply(src, dst, load_model(model_path, device="cpu", precision=precision), temporal)
            report, frames = measure_flicker(src, dst), decode(dst)
            if base is None:
                base, per_frame = report.error, frames
            setting = "per-frame" if temporal == 0 else f"--temporal {temporal:g}"
            # PSNR against another model's output says nothing about fidelity: left blank.
            fidelity = psnr(frames, per_frame) if model_path == plain_path else None
            rows.append(Row(name, label, setting, report, base, fidelity))
            rows[-1].print()
    return rows


def train_pair(out: Path, steps: int, weight: float) -> dict[str, Path]:
    """{label: exported X->Y model file}, trained with loss.temporal 0 and `weight`, otherwise the same
    (recipes/tiny.toml widened to 3 blocks, ngf 16, 64-px crops; `steps` iterations, half decaying)
    on generated summer and winter pan clips, every frame taken so consecutive frames pair up."""
    from make_samples import make_set

    from vidcycle.training.recipe import load_recipe
    from vidcycle.training.trainer import RunOptions, train

    os.environ["VIDCYCLE_HOME"] = str(out / "home")  # keep the trained pair out of the user's store
    data = out / "train"
    make_set(data, photos=0, clips=3, seed=4000, size=(160, 96), seconds=4.0, fps=12, paired=False, fmt="jpg")
    models = {}
    for label, temporal in (("tiny trained", 0.0), (f"tiny + loss.temporal {weight:g}", weight)):
        recipe = load_recipe(REPO / "recipes" / "tiny.toml", {
            "model.n_blocks": 3, "model.ngf": 16, "model.ndf": 16, "data.load_size": 72, "data.crop_size": 64,
            "data.dedup_threshold": 0.0, "schedule.iterations": steps - steps // 2,
            "schedule.iterations_decay": steps // 2, "schedule.sample_every": steps,
            "schedule.checkpoint_every": steps, "loss.temporal": temporal})
        name = f"bench_t{temporal:g}".replace(".", "_")
        start = time.perf_counter()
        # fp32 on one thread: for nets this small, bf16 autocast and a second (spin-waiting) thread were
        # both slower on a busy 2-core machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = train(recipe, RunOptions(x_inputs=[data / "summer"], y_inputs=[data / "winter"],
                                              out=out / name, name=name, device="cpu", precision="fp32",
                                              cache_dir=out / "frames", workers=0))
        finally:
            torch.set_num_threads(threads)
        print(f"(trained '{label}': {result.iteration} iterations in {time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
        models[label] = result.exported[0].path
    return models


def speed(src: Path, out: Path, model_path: Path, strength: float, repeats: int, precision) -> dict:
    """Frames per second through translate_video, temporal off and on, alternated, best of `repeats`;
    and the blender's own time inside the pipeline (motion in the decode thread, blend after the
    network), which a busy machine disturbs less than the fps ratio."""
    translator = load_model(model_path, device="cpu", precision=precision)
    count = sum(1 for _ in iter_frames(src))
    apply(src, out / "warmup.mp4", translator, 0.0)
    best = {0.0: float("inf"), strength: float("inf")}
    spent = {"motion": [], "blend": []}
    with _timed(TemporalBlender, spent):
        for _ in range(repeats):
            for s in best:
                before = {k: sum(v) for k, v in spent.items()}
                seconds = apply(src, out / f"speed_{s:g}.mp4", translator, s)
                if seconds < best[s]:
                    best[s] = seconds
                    if s:
                        blender_s = sum(sum(v) - before[k] for k, v in spent.items())
    return {"fps_off": count / best[0.0], "fps_on": count / best[strength],
            "blender_ms": 1000 * blender_s / count, "frame_ms": 1000 * best[0.0] / count}


@contextmanager
def _timed(cls, spent: dict):
    """Accumulate the wall time of cls.motion and cls.blend calls into spent[name]."""
    originals = {name: getattr(cls, name) for name in spent}

    def wrap(name, original):
        def timed(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                spent[name].append(time.perf_counter() - start)
        return timed

    for name, original in originals.items():
        setattr(cls, name, wrap(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(cls, name, original)


# ---------------------------------------------------------------- report

HEADER = (f"{'clip':7} {'model':24} {'setting':15} {'warp err':>9} {'floor':>9} {'excess':>9} {'removed':>8} "
          f"{'PSNR vs per-frame':>17} {'PSNR vs clean':>13}")


@dataclass
class Row:
    clip: str
    model: str
    setting: str
    report: object
    base: object  # the per-frame WarpingError of the same model and clip
    fidelity: float | None  # PSNR against the per-frame output of the same model
    clean: float | None = None  # PSNR against the noise-free output (stand-in only)

    def print(self):
        error = self.report.error
        removed = "-" if error is self.base else f"{1 - error.excess / self.base.excess:.0%}"
        fidelity = "-" if self.fidelity is None else "(itself)" if self.fidelity == float("inf") else \
            f"{self.fidelity:.1f} dB"
        clean = "" if self.clean is None else f"{self.clean:.1f} dB"
        structure = "" if self.report.structure_ok else "  STRUCTURE DIFFERS: " + ",".join(
            self.report.to_dict()["differ"])
        print(f"{self.clip:7} {self.model:24} {self.setting:15} {error.translated:9.6f} {error.source:9.6f} "
              f"{error.excess:9.6f} {removed:>8} {fidelity:>17} {clean:>13}{structure}", flush=True)


def verdict(rows, default: float, fps: dict | None):
    """The issue's targets against the rows at the default strength."""
    at_default = [row for row in rows if row.setting == f"--temporal {default:g}"]
    print(f"\ntargets at the default strength {default:g} (removed >= 50%, PSNR vs per-frame >= 30 dB, "
          f"speed cost < 25%):")
    for row in at_default:
        removed = 1 - row.report.error.excess / row.base.excess
        ok = removed >= 0.5 and row.fidelity >= 30
        print(f"  {row.clip:7} {row.model:24} removed {removed:4.0%}, {row.fidelity:.1f} dB: "
              f"{'met' if ok else 'NOT met'}")
    if fps:
        cost = fps["fps_off"] / fps["fps_on"] - 1
        share = fps["blender_ms"] / fps["frame_ms"]
        print(f"  speed: fps cost {cost:+.1%}, blender time {share:.1%} of a frame: "
              f"{'met' if max(cost, share) < 0.25 else 'NOT met'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48, help="frames per generated clip")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--strengths", default=f"0.3,{RECOMMENDED_TEMPORAL_STRENGTH:g}")
    parser.add_argument("--net-frames", type=int, default=16,
                        help="frames of the pan for the speed runs (0: skip)")
    parser.add_argument("--repeats", type=int, default=2, help="speed runs per setting (the best is kept)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--train-steps", type=int, default=0, help="also train two tiny models (0: skip)")
    parser.add_argument("--temporal-weight", type=float, default=10.0,
                        help="loss.temporal of the second trained model (the cycle loss weighs 10)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is faster on a busy 2-core machine")
    parser.add_argument("--keep", help="keep clips and outputs in this folder")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    strengths = [float(s) for s in args.strengths.split(",")]
    default = RECOMMENDED_TEMPORAL_STRENGTH
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        clips = make_clips(out, size, args.frames)
        print(f"{args.frames}-frame clips at {size[0]}x{size[1]}; torch threads {torch.get_num_threads()}; "
              f"warping error in [0,1] RGB (Lai et al.), flow on the source at <= 360 px; "
              f"default strength {default:g}")
        print(HEADER)
        rows = flicker_rows(clips, out, strengths)
        rows += demo_rows(clips, out, strengths, args.precision)
        if args.train_steps:
            rows += trained_rows(clips, out, args.train_steps, args.temporal_weight, strengths, args.precision)
        fps = None
        if args.net_frames:
            model_path = out / "g9_ngf64_random.safetensors"
            spec = GeneratorSpec(n_blocks=9, ngf=64)
            save_model(model_path, build_generator(spec), ModelInfo(spec=spec, source="benchmark, random init"))
            short = out / "pan_short.mp4"
            write_clip(short, pan_frames(7, "summer", size, args.net_frames / FPS, FPS, pan=1.8), FPS,
                       ambience(7, "summer", args.net_frames / FPS))
            fps = speed(short, out, model_path, default, args.repeats, args.precision)
            print(f"\napply speed, 9-block ngf-64 random init, {args.net_frames} frames at {size[0]}x{size[1]}, "
                  f"CPU {args.precision}, torch threads {torch.get_num_threads()}, best of {args.repeats} "
                  f"alternated:\n  {fps['fps_off']:.2f} fps per-frame, {fps['fps_on']:.2f} fps with --temporal "
                  f"{default:g}: cost {fps['fps_off'] / fps['fps_on'] - 1:+.1%}\n  blender inside the pipeline: "
                  f"{fps['blender_ms']:.1f} ms a frame (flow + mask + blend) = "
                  f"{fps['blender_ms'] / fps['frame_ms']:.1%} of the {fps['frame_ms']:.0f} ms a frame without it")
        verdict(rows, default, fps)


if __name__ == "__main__":
    main()
