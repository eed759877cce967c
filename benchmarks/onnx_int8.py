"""int8 parity and speed on the season samples with the trained demo models (the int8 decision).

    python benchmarks/onnx_int8.py [--every 4] [--repeats 5]

For each set (summer photos and summer clip frames through demo-summer2winter,
winter photos and winter clip frames through demo-winter2summer), the float32
ONNX export is quantized to int8 calibrated on that set (vidcycle.runtime.onnx_int8)
and compared with the float32 graph on every frame of the set (PSNR, 8-bit
scale over [-1, 1]; the offer threshold is 35 dB), then on the other set of
the same model (calibrated on one input, used on another). Speed: float32
against int8 ONNX Runtime on one sample frame, interleaved, medians.
"""

import argparse
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidcycle.runtime.onnx_engine import OrtEngine  # noqa: E402
from vidcycle.errors import ModelError  # noqa: E402
from vidcycle.media.images import read_image  # noqa: E402
from vidcycle.runtime.onnx_export import export_onnx  # noqa: E402
from vidcycle.runtime.onnx_int8 import INT8_MIN_PSNR_DB, _as_batch, _parity, quantize_int8  # noqa: E402
from vidcycle.media.video import iter_frames  # noqa: E402


def sample_sets(every: int) -> dict:
    photos = {season: [read_image(p).rgb for p in sorted(glob.glob(str(REPO / f"samples/photos/{season}_*.jpg")))]
              for season in ("summer", "winter")}
    clips = {season: [f.rgb for f in iter_frames(REPO / f"samples/{season}_clip.mp4") if f.index % every == 0]
             for season in ("summer", "winter")}
    return {"demo-summer2winter": {"summer photos": photos["summer"], "summer clip": clips["summer"]},
            "demo-winter2summer": {"winter photos": photos["winter"], "winter clip": clips["winter"]}}


def median_ms(engines: dict, frame: np.ndarray, repeats: int) -> dict:
    batch = _as_batch(frame)
    times = {name: [] for name in engines}
    for engine in engines.values():
        engine.run(batch)
    for _ in range(repeats):
        for name, engine in engines.items():  # interleaved: load from other processes hits both alike
            start = time.perf_counter()
            engine.run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=4, help="take every Nth clip frame")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}; int8 offered at >= {INT8_MIN_PSNR_DB:.0f} dB")
    with tempfile.TemporaryDirectory() as tmp:
        for model, sets in sample_sets(args.every).items():
            fp32 = export_onnx(model, Path(tmp) / f"{model}.onnx").path
            for name, frames in sets.items():
                int8 = Path(tmp) / f"{model}-{name.replace(' ', '_')}.int8.onnx"
                start = time.perf_counter()
                try:
                    result = quantize_int8(fp32, int8, frames)
                    verdict = "kept"
                except ModelError as error:
                    print(f"{model} calibrated on {name}: {error}")
                    continue
                seconds = time.perf_counter() - start
                line = (f"{model} calibrated on {name} ({len(frames)} frames, {result.calibration_frames} used): "
                        f"worst {result.parity_db:.1f} dB ({verdict}, {seconds:.1f} s)")
                for other, other_frames in sets.items():
                    if other != name:
                        line += f"; on {other}: worst {min(_parity(fp32, int8, other_frames)):.1f} dB"
                print(line)
                ms = median_ms({"fp32": OrtEngine(fp32), "int8": OrtEngine(int8)}, frames[0], args.repeats)
                h, w = frames[0].shape[:2]
                print(f"    {w}x{h} batch 1: fp32 {ms['fp32']:.1f} ms, int8 {ms['int8']:.1f} ms, "
                      f"int8 speed-up {ms['fp32'] / ms['int8']:.2f}x")


if __name__ == "__main__":
    main()
