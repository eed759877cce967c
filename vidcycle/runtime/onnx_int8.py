"""Static int8 quantization of an exported float32 graph, calibrated on the frames it will translate.

ONNX Runtime's quantize_static in QDQ form: convolution weights int8 per
output channel, activations uint8 with ranges from the 99.999th percentile of
what the calibration frames produce; instance norm, padding and tanh stay
float, and so do the first and last convolutions (the RGB stem and head:
quantizing them cost more fidelity than it saved time). The
result is checked against the float32 graph on the check frames and refused
below INT8_MIN_PSNR_DB, leaving no file. Measured: benchmarks/README.md, "int8 graphs".
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidcycle.errors import MediaError, ModelError
from vidcycle.models.frames import frames_to_batch
from vidcycle.runtime.onnx_export import INPUT_NAME, OUTPUT_NAME, psnr_db, require, runtime_errors, write_atomically

# 35 dB is ~4.5 8-bit levels RMS: visible on flat gradients side by side, not in motion. Below it the
# float graph is the better offer; the check is per input because ranges come from the input.
INT8_MIN_PSNR_DB = 35.0
CALIBRATION_FRAMES = 16
CALIBRATION_TILE = 256  # calibrate on crops: instance norm makes ranges size-independent, memory is not


@dataclass(frozen=True)
class Int8Result:
    path: Path
    parity_db: float  # worst check frame against the float32 graph
    worst_frame: int
    calibration_frames: int
    threshold_db: float = INT8_MIN_PSNR_DB


def quantize_int8(fp32_graph, output, frames, check_frames=None) -> Int8Result:
    """Quantize an exported float32 graph to int8, calibrated on `frames` (uint8 HxWx3 RGB, any
    sizes; at most CALIBRATION_FRAMES spread over them are used, cropped to CALIBRATION_TILE) and
    checked on `check_frames` (default: the calibration frames, whole).

    Raises ModelError (parity below INT8_MIN_PSNR_DB, naming the worst frame; no file is left),
    MediaError (no frames), DeviceError (onnx or onnxruntime missing).
    """
    frames = list(frames)
    if not frames:
        raise MediaError("int8 calibration needs at least one frame")
    calibration = _calibration_batches(frames)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as work:
        quantized = Path(work) / "int8.onnx"
        _quantize(Path(fp32_graph), quantized, calibration, Path(work))
        by_frame = _parity(fp32_graph, quantized, check_frames if check_frames is not None else frames)
        worst = int(np.argmin(by_frame))
        result = Int8Result(output, by_frame[worst], worst, len(calibration))
        if result.parity_db < INT8_MIN_PSNR_DB:
            raise ModelError(f"{output}: int8 refused: check frame {worst} matches float32 only to "
                             f"{result.parity_db:.1f} dB PSNR (needs >= {INT8_MIN_PSNR_DB:.0f}); use the "
                             "float32 graph")
        _write_with_metadata(quantized, fp32_graph, result)
    return result


def _calibration_batches(frames: list) -> list[np.ndarray]:
    picks = np.linspace(0, len(frames) - 1, min(len(frames), CALIBRATION_FRAMES)).round().astype(int)
    batches = []
    for index in sorted(set(picks.tolist())):
        frame = np.asarray(frames[index])
        top = (frame.shape[0] - min(frame.shape[0], CALIBRATION_TILE)) // 2
        left = (frame.shape[1] - min(frame.shape[1], CALIBRATION_TILE)) // 2
        tile = np.ascontiguousarray(frame[top:top + CALIBRATION_TILE, left:left + CALIBRATION_TILE])
        batches.append(_as_batch(tile))
    return batches


def _as_batch(frame: np.ndarray) -> np.ndarray:
    return frames_to_batch(torch.from_numpy(np.ascontiguousarray(frame)[None]), torch.float32).numpy()


def _quantize(fp32_graph: Path, output: Path, batches: list, work: Path) -> None:
    onnx = require("onnx")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
    convolutions = [node.name for node in onnx.load(str(prepared)).graph.node
                    if node.op_type in ("Conv", "ConvTranspose")]
    with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
        quantize_static(str(prepared), str(output), Frames(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "ConvTranspose"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        nodes_to_exclude=[convolutions[0], convolutions[-1]])


def _parity(fp32_graph, int8_graph: Path, frames) -> list[float]:
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for path in (fp32_graph, int8_graph)]
    except runtime_errors(ort) as error:
        raise ModelError(f"ONNX Runtime cannot load the int8 graph: {error}") from error
    by_frame = []
    for frame in frames:
        batch = {INPUT_NAME: _as_batch(np.asarray(frame))}
        expected, got = (session.run([OUTPUT_NAME], batch)[0] for session in sessions)
        by_frame.append(psnr_db(got, expected))
    return by_frame


def _write_with_metadata(quantized: Path, fp32_graph, result: Int8Result) -> None:
    onnx = require("onnx")
    model = onnx.load(str(quantized))
    props = {prop.key: prop.value for prop in onnx.load(str(fp32_graph), load_external_data=False).metadata_props}
    props.update(precision="int8", parity_psnr_db=f"{result.parity_db:.2f}",
                 parity_threshold_db=f"{INT8_MIN_PSNR_DB:.1f}", parity_reference="the float32 graph",
                 int8_calibration=f"{result.calibration_frames} frames of the input, crops <= {CALIBRATION_TILE} px, "
                                  "percentile 99.999, weights per channel; first and last convolutions float")
    for key in ("parity_by_size", "parity_worst_size"):
        props.pop(key, None)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    write_atomically(model, result.path)
