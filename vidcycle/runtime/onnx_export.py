"""Exporting a generator to ONNX: a graph that pads and crops itself, checked against torch before it is kept.

The graph takes a float32 NCHW batch in [-1, 1] of any batch size, height and
width and returns the same shape and range, like the torch generator: the
pad to a multiple of 4 (at least 8 a side; reflect, or replicate for tiny
images) and the crop back are computed from the input's shape inside the
graph. Before a file appears under its name, ONNX Runtime and torch float32
translate random and structured frames at two sizes (one odd); an export
whose worst PSNR falls below the threshold raises ModelError and leaves no
file. The measured parity goes into the file's metadata_props with the
domains, architecture, training size and the source model's content hash.

onnx and onnxruntime are imported here (and in engines.py) only, lazily, so
`import vidcycle` and the CLI's help never need them.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from vidcycle.errors import DeviceError, ModelError, OutputExistsError, first_line
from vidcycle.files import write_atomic
from vidcycle.metrics import psnr
from vidcycle.models.frames import frames_to_batch
from vidcycle.models.modelfile import ModelInfo, header_fields, state_hash
from vidcycle.models.store import load_generator
from vidcycle.version import __version__

INSTALL_HINT = "pip install onnxruntime onnx"
FORMAT = "vidcycle-onnx-generator"
FORMAT_VERSION = 1  # bump when the graph's layout (names, padding wrapper) changes: cached graphs are keyed by it
INPUT_NAME, OUTPUT_NAME = "input", "output"
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 20  # Range needs int64 Clip (13); torch's TorchScript exporter stops at 20
# PSNR of the ONNX output against torch float32, on the float outputs scaled to 8-bit levels (255 peak).
# float32: 60 dB is a quarter of one 8-bit level RMS, far below what a right graph measures, so anything
# under it is a wrong graph, not rounding. fp16: ONNX Runtime's CPU provider folds fp16 weights back to
# float32, so fp16 arithmetic as a GPU does it is also checked through torch's own fp16 on the CPU (which
# catches activations that overflow fp16); 45 dB (~1.4 levels RMS) leaves room for GPU rounding.
# Measured: benchmarks/README.md, "ONNX parity thresholds".
FP32_MIN_PSNR_DB = 60.0
FP16_MIN_PSNR_DB = 45.0
MIN_PSNR_DB = {"fp32": FP32_MIN_PSNR_DB, "fp16": FP16_MIN_PSNR_DB}
CHECK_SIZES = ((68, 124), (37, 53))  # (height, width): one a multiple of 4, one odd on both sides

GraphEdit = Callable[[object], None]  # called with the onnx.ModelProto (onnx is imported lazily)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how closely it matches torch float32."""

    path: Path
    precision: str
    opset: int
    parity_db: float  # the worst size's PSNR
    worst_size: str  # "HxW"
    parity_by_size: dict = field(default_factory=dict)  # "HxW" -> PSNR dB, ONNX Runtime vs torch float32
    fp16_torch_by_size: dict = field(default_factory=dict)  # fp16 only: torch fp16 vs torch float32
    threshold_db: float = FP32_MIN_PSNR_DB


def require(module_name: str):
    """Import onnx or onnxruntime. Raises DeviceError with the install command when it is missing."""
    try:
        return __import__(module_name)
    except ImportError as error:
        raise DeviceError(f"{module_name} is not installed; install ONNX support with: {INSTALL_HINT}") from error


class PaddedGenerator(nn.Module):
    """The generator with its pad and crop written as shape arithmetic, so the graph stays dynamic.

    Exporters trace Python branches (`max`, reflect or replicate) for the example's size only;
    here padding is a gather with indices computed from the input's shape, so every size takes
    the same graph path and pads exactly as nets.pad_to_multiple does. The padded batch is a
    multiple of 4 and at least 8 a side, so the generator's own padding is a no-op inside.
    """

    def __init__(self, generator: nn.Module, dtype: torch.dtype = torch.float32, multiple: int = 4,
                 min_side: int = 8):
        super().__init__()
        self.generator = generator
        self.dtype = dtype
        self.multiple = multiple
        self.min_side = min_side

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[2], batch.shape[3]
        pad_h = _maximum((-height) % self.multiple, self.min_side - height)
        pad_w = _maximum((-width) % self.multiple, self.min_side - width)
        reflect = (_as_tensor(pad_h) < _as_tensor(height)) & (_as_tensor(pad_w) < _as_tensor(width))
        padded = batch.index_select(2, _pad_index(height, pad_h, reflect))
        padded = padded.index_select(3, _pad_index(width, pad_w, reflect))
        return self.generator(padded.to(self.dtype)).float()[:, :, :height, :width]


def _pad_index(size, pad, reflect):
    """Source row (or column) for each padded position: reflected about the last one, or clamped to it."""
    position = torch.arange(size + pad)
    last = size - 1
    reflected = torch.where(position <= last, position, 2 * last - position).clamp(min=0)
    return torch.where(reflect, reflected, position.clamp(max=last))


def _maximum(a, b):
    # Traced by TorchScript the sizes are 0-d tensors; under torch.export they are SymInts.
    return torch.maximum(a, b) if torch.is_tensor(a) else torch.sym_max(a, b)


def _as_tensor(value):
    return value if torch.is_tensor(value) else torch.scalar_tensor(value)


def export_onnx(name_or_path, output, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                overwrite: bool = False, edit_graph: GraphEdit | None = None,
                exporter: str = "torchscript") -> ExportResult:
    """Export a stored model (name or file) to `output` after checking it against torch.

    Raises ModelError (unknown or unreadable model; parity below the threshold, naming the
    worst size; a graph ONNX Runtime cannot run), OutputExistsError (output exists and not
    `overwrite`), DeviceError (onnx or onnxruntime missing) and ValueError for a bad
    precision or opset.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: exists; pass overwrite=True to replace it",
                                cli=f"{output}: exists; pass --overwrite to replace it")
    generator, info = load_generator(name_or_path)
    return export_generator(generator, info, output, precision, opset, edit_graph, exporter)


def export_generator(generator: nn.Module, info: ModelInfo, output, precision: str = "fp32",
                     opset: int = DEFAULT_OPSET, edit_graph: GraphEdit | None = None,
                     exporter: str = "torchscript") -> ExportResult:
    """Trace, check and atomically write one generator (any architecture whose forward takes a
    [-1, 1] NCHW batch). `edit_graph` is called on the traced graph before the check: tests use
    it to break a weight. Raises as export_onnx does; on failure no file is left.
    """
    _check_options(precision, opset, exporter)
    onnx = require("onnx")
    graph = trace_graph(generator, precision, opset, exporter)
    if edit_graph is not None:
        edit_graph(graph)
    by_size = measure_parity(graph, generator)
    fp16_by_size = measure_torch_fp16_parity(generator) if precision == "fp16" else {}
    worst = {size: min(db, fp16_by_size.get(size, math.inf)) for size, db in by_size.items()}
    worst_size = min(worst, key=worst.get)
    result = ExportResult(Path(output), precision, graph_opset(graph), worst[worst_size], worst_size,
                          by_size, fp16_by_size, MIN_PSNR_DB[precision])
    if not result.parity_db >= result.threshold_db:
        found = "non-finite values" if result.parity_db == -math.inf else f"{result.parity_db:.1f} dB PSNR"
        raise ModelError(f"{output}: ONNX export rejected: at {worst_size} the {precision} graph matches torch "
                         f"float32 only to {found} (needs >= {result.threshold_db:.0f} dB); no file written")
    onnx.helper.set_model_props(graph, graph_metadata(info, generator, result, exporter))
    write_atomically(graph, result.path)
    return result


def _check_options(precision: str, opset: int, exporter: str) -> None:
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"unknown exporter {exporter!r}; use torchscript or dynamo")
    if precision not in MIN_PSNR_DB:
        raise ValueError(f"unknown ONNX precision {precision!r}; use {' or '.join(MIN_PSNR_DB)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")


def trace_graph(generator: nn.Module, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                exporter: str = "torchscript"):
    """The generator as an onnx.ModelProto with dynamic batch, height and width.

    `exporter` is "torchscript" (torch.onnx.export(dynamo=False): the default, see below) or
    "dynamo" (torch.export based; needs onnxscript, targets opset 18 or later whatever is asked).
    Both give the same, correct dynamic graph through PaddedGenerator. TorchScript is the default
    because it exports several times faster (benchmarks/README.md, "ONNX parity thresholds"), which
    is what a first-use cache build costs, honours the opset asked for and needs no onnxscript;
    torch marks it legacy, so "dynamo" is kept working for when it goes.
    Raises ModelError when torch cannot export the network, DeviceError when onnx is missing.
    """
    onnx = require("onnx")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    wrapper = PaddedGenerator(copy.deepcopy(generator).to(dtype).eval(), dtype,
                              multiple=getattr(generator, "size_multiple", 4)).eval()
    example = torch.zeros(1, 3, *CHECK_SIZES[-1])
    export = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}[exporter]
    with warnings.catch_warnings(), torch.no_grad():
        # The generator's own pad branches are traced at an already padded size (a no-op there).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # InstanceNorm without running stats always normalises by the input's own statistics.
        warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        try:
            graph = export(wrapper, example, opset, onnx)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
            raise ModelError(f"torch could not export this generator to ONNX: {first_line(error)}") from error
    return graph


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, opset: int, onnx):
    dims = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims})
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, opset: int, onnx):
    require("onnxscript")
    from torch.export import Dim
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=1), 3: Dim("width", min=1)}
    # It has no translations below opset 18 and would only warn and write 18 anyway.
    program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=max(opset, 18), verbose=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"batch": dims})
    graph = program.model_proto
    for dim, name in zip(graph.graph.output[0].type.tensor_type.shape.dim, ("batch", "", "height", "width")):
        if name:  # torch.export names output sizes by their formula; they equal the input's
            dim.dim_param = name
    return graph


def graph_opset(graph) -> int:
    """The default-domain opset a graph was written for."""
    return next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))


def measure_parity(graph, generator: nn.Module, sizes=CHECK_SIZES) -> dict[str, float]:
    """PSNR (dB, 255 peak over [-1, 1]) of ONNX Runtime (CPU) against the torch float32 generator,
    per "HxW", each on two random frames and one structured frame. Raises ModelError when ONNX
    Runtime refuses the graph or fails at a size (a graph that lost its dynamic shape).
    """
    ort = require("onnxruntime")
    session = _cpu_session(ort, graph.SerializeToString())

    def run_graph(batch: torch.Tensor) -> np.ndarray:
        try:
            return session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        except runtime_errors(ort) as error:
            size = "x".join(map(str, batch.shape[2:]))
            raise ModelError(f"ONNX Runtime failed on a {size} batch: {first_line(error)}") from error

    return _compare_with_float32(generator, run_graph, sizes)


def measure_torch_fp16_parity(generator: nn.Module, sizes=CHECK_SIZES) -> dict[str, float]:
    """PSNR per "HxW" of the generator run by torch in float16 against torch float32."""
    half = copy.deepcopy(generator).half().eval()

    def run_half(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return half(batch.half()).float().numpy()

    return _compare_with_float32(generator, run_half, sizes)


def _compare_with_float32(generator: nn.Module, run: Callable, sizes) -> dict[str, float]:
    reference = copy.deepcopy(generator).float().eval()
    by_size = {}
    for seed, (height, width) in enumerate(sizes):
        batch = frames_to_batch(torch.from_numpy(parity_frames(height, width, seed)), torch.float32)
        with torch.no_grad():
            expected = reference(batch).numpy()
        got = run(batch)
        if got.shape != expected.shape:
            raise ModelError(f"ONNX graph returned {got.shape} for {expected.shape} at {height}x{width}")
        by_size[f"{height}x{width}"] = psnr_db(got, expected)
    return by_size


def _cpu_session(ort, model_bytes: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except runtime_errors(ort) as error:
        raise ModelError(f"ONNX Runtime cannot load the exported graph: {first_line(error)}") from error


def runtime_errors(ort) -> tuple:
    """onnxruntime's exception classes (they derive from Exception directly, not RuntimeError)."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(getattr(state, name) for name in names if hasattr(state, name)) + (RuntimeError,)


def parity_frames(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Three uint8 HxWx3 frames: two of uniform noise and one of gradients with hard edges."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    return np.concatenate([noise, structured_frame(height, width)[None]])


def structured_frame(height: int, width: int) -> np.ndarray:
    """Red ramps left to right, green top to bottom, blue is a checkerboard, with a white box."""
    rows, cols = np.mgrid[0:height, 0:width]
    frame = np.stack([cols * 255 // max(width - 1, 1), rows * 255 // max(height - 1, 1),
                      ((rows // 4 + cols // 4) % 2) * 255], axis=-1)
    frame[height // 4: height // 2, width // 4: width // 2] = 255
    return frame.astype(np.uint8)


def psnr_db(got: np.ndarray, expected: np.ndarray) -> float:
    """PSNR of two [-1, 1] float arrays with 8-bit scaling (127.5 levels per unit, 255 peak);
    -inf when either holds NaN or infinity (an fp16 overflow), so no threshold passes it."""
    return psnr(got.astype(np.float64) * 127.5, expected.astype(np.float64) * 127.5)


def graph_metadata(info: ModelInfo, generator: nn.Module, result: ExportResult,
                   exporter: str = "torchscript") -> dict[str, str]:
    """The metadata_props an exported graph carries (all strings)."""
    content_hash = info.content_hash or state_hash(generator.state_dict())
    metadata = {
        **header_fields(replace(info, content_hash=content_hash)),
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "precision": result.precision,
        "opset": str(result.opset),
        "parity_psnr_db": f"{result.parity_db:.2f}",
        "parity_worst_size": result.worst_size,
        "parity_by_size": _rounded_json(result.parity_by_size),
        "parity_threshold_db": f"{result.threshold_db:.1f}",
        "io": "input: float32 N x 3 x H x W RGB in [-1, 1], any N, H, W; output: same shape and range",
        "exporter": f"vidcycle {__version__}, torch {torch.__version__}, {exporter} exporter",
    }
    if result.fp16_torch_by_size:
        metadata["fp16_torch_parity_by_size"] = _rounded_json(result.fp16_torch_by_size)
    return metadata


def _rounded_json(by_size: dict) -> str:
    return json.dumps({size: round(db, 2) for size, db in by_size.items()})


def read_metadata(path) -> dict[str, str]:
    """metadata_props of an ONNX file. Raises ModelError when it is not a readable ONNX file."""
    onnx = require("onnx")
    from google.protobuf.message import DecodeError
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as error:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(error)})") from error
    return {prop.key: prop.value for prop in model.metadata_props}


def write_atomically(graph, path) -> None:
    """Serialise through the one atomic writer: `path` is whole or absent, with the umask's mode. Raises
    ModelError where it cannot be written (a full disk, no permission)."""
    try:
        write_atomic(path, graph.SerializeToString(), durable=True)
    except OSError as error:
        raise ModelError(f"{path}: cannot write the ONNX file ({error.strerror or error})") from error

