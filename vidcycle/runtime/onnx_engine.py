"""The ONNX Runtime engine (the table's "onnxruntime", vidcycle.runtime.engines), and the cache of ONNX
graphs built from store models.

An OrtEngine translates frames with the same contract as Translator
(models.frames.RunsBatches: uint8 NHWC in, uint8 NHWC out, rounded as
batch_to_frames does), so the apply code can take either. Graphs are built on first use from the model
file (onnx_export checks each against torch before keeping it) and cached
in `store_home()/onnx`, keyed by the model's content hash, the precision,
the opset and the onnxruntime version: an existing graph is never rebuilt,
and an interrupted build leaves no entry (the file is renamed into place).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidcycle.errors import DeviceError, ModelError, UsageError
from vidcycle.models.frames import RunsBatches
from vidcycle.models.modelfile import ModelInfo, info_from_fields, read_info
from vidcycle.models.store import MODEL_SUFFIX, load_generator, resolve_model_path, store_home
from vidcycle.runtime.onnx_export import (DEFAULT_OPSET, FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, export_generator,
                                          require, runtime_errors)
from vidcycle.runtime.threads import configure_onnxruntime

CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"


class GraphCache:
    """ONNX graphs of store models, built once each. `builds` counts the graphs this object built."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else store_home() / "onnx"
        self.builds = 0

    def entry(self, content_hash: str, precision: str, opset: int) -> Path:
        ort = require("onnxruntime")
        name = f"{content_hash}-{precision}-opset{opset}-ort{ort.__version__}-v{FORMAT_VERSION}.onnx"
        return self.folder / name

    def graph_for(self, name_or_path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                  loaded: tuple | None = None) -> tuple[Path, ModelInfo]:
        """The cached graph of a model (store name or file), built and checked if absent. `loaded`: the
        (generator, info) of that model when the caller has read it already.

        Raises ModelError (unknown model; a graph that fails its parity check is not cached),
        DeviceError (onnx or onnxruntime missing).
        """
        path = resolve_model_path(name_or_path)
        generator, info = loaded or (None, _header(path))
        if info is None:
            generator, info = load_generator(path)
        entry = self.entry(info.content_hash, precision, opset)
        if entry.is_file():
            return entry, info
        if generator is None:
            generator, info = load_generator(path)
        try:
            export_generator(generator, info, entry, precision, opset)
        except OSError as error:
            raise UsageError(f"ONNX graph cache {self.folder}: cannot write ({error.strerror or error}); set "
                             f"VIDCYCLE_HOME to a writable folder, or run with engine='torch' "
                             f"(--engine torch)") from error
        self.builds += 1
        return entry, info


def _header(path: Path) -> ModelInfo | None:
    """A model file's info when its header holds the content hash (no weights read), else None."""
    if path.suffix == MODEL_SUFFIX:
        info = read_info(path)
        if info.content_hash:
            return info
    return None


class OrtEngine(RunsBatches):
    """An ONNX Runtime session over one exported generator graph, used like a Translator."""

    def __init__(self, graph_path, device="auto", threads: int | None = None, info: ModelInfo | None = None,
                 name: str = ""):
        """Raises DeviceError (onnxruntime missing; CUDA asked for but not available) or ModelError."""
        ort = require("onnxruntime")
        providers = pick_providers(ort, device)
        options = ort.SessionOptions()
        configure_onnxruntime(options, threads or torch.get_num_threads())
        try:
            self.session = ort.InferenceSession(str(graph_path), options, providers=providers)
        except runtime_errors(ort) as error:
            raise ModelError(f"{graph_path}: ONNX Runtime cannot load this graph ({error})") from error
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = info or info_from_metadata(self.metadata, graph_path)
        self.device = torch.device("cuda" if self.session.get_providers()[0] == CUDA_PROVIDER else "cpu")
        self.precision = self.metadata.get("precision", "fp32")
        self.name = name or Path(graph_path).stem
        self.threads = options.intra_op_num_threads
        self._errors = runtime_errors(ort)

    def run(self, batch) -> torch.Tensor:
        """float32 NCHW batch in [-1, 1] (numpy or torch, any size) -> float32 NCHW torch tensor."""
        array = batch.detach().cpu().numpy() if torch.is_tensor(batch) else np.asarray(batch)
        array = np.ascontiguousarray(array, dtype=np.float32)
        try:
            return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])
        except self._errors as error:
            raise DeviceError(f"ONNX Runtime failed on a {array.shape[3]}x{array.shape[2]} batch of "
                              f"{array.shape[0]} ({str(error).splitlines()[0]}); try engine='torch' "
                              f"(--engine torch)") from error


def pick_providers(ort, device="auto") -> list:
    """ONNX Runtime providers for a device: CUDA (with CPU fallback) when asked for, or `auto` and present.

    Raises DeviceError for CUDA on an onnxruntime without its CUDA provider, or an unknown device.
    """
    available = ort.get_available_providers()
    kind, _, index = str(device or "auto").partition(":")
    if kind == "auto":
        kind = "cuda" if CUDA_PROVIDER in available else "cpu"
    if kind == "cpu":
        return [CPU_PROVIDER]
    if kind != "cuda":
        raise DeviceError(f"unknown device {device!r} for ONNX Runtime; use auto, cpu or cuda")
    if CUDA_PROVIDER not in available:
        raise DeviceError("this onnxruntime has no CUDA provider; install onnxruntime-gpu, or run on device 'cpu' "
                          "(--device cpu)")
    if not index.isdigit() and index:
        raise DeviceError(f"unknown device {device!r}; use cuda or cuda:N")
    return [(CUDA_PROVIDER, {"device_id": int(index or 0)}), CPU_PROVIDER]


def load_engine(name_or_path, device="auto", precision="fp32", threads: int | None = None,
                opset: int = DEFAULT_OPSET, cache: GraphCache | None = None, loaded: tuple | None = None,
                precisions: dict | None = None) -> OrtEngine:
    """An engine for a store model, a model file or an exported `.onnx` file.

    Model files go through the graph cache (built and checked on first use). Precision `auto` is
    `precisions[device type the providers run on]`: the engine table's record passes its own (this
    module does not read the table, which loads it). Raises ModelError, DeviceError.
    """
    if Path(str(name_or_path)).suffix == ".onnx":
        return OrtEngine(name_or_path, device, threads)
    ort = require("onnxruntime")
    if precision == "auto":
        runs_on = "cpu" if pick_providers(ort, device)[0] == CPU_PROVIDER else "cuda"
        precision = (precisions or {}).get(runs_on, "auto")
    if precision not in ("fp32", "fp16"):
        raise DeviceError(f"precision {precision!r} is not offered for ONNX Runtime; use fp32 or fp16")
    graph, info = (cache or GraphCache()).graph_for(name_or_path, precision, opset, loaded)
    return OrtEngine(graph, device, threads, info=info, name=resolve_model_path(name_or_path).stem)


def info_from_metadata(metadata: dict, path) -> ModelInfo:
    """A ModelInfo from an exported graph's metadata_props. Raises ModelError if they are not ours."""
    try:
        return info_from_fields(metadata)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{path}: not a vidcycle ONNX export (metadata: {error})") from error

