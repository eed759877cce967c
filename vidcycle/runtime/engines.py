"""The engines that can run a generator, as a table: name -> `EngineRecord`.

The translator (vidcycle.runtime.translator.load_model), the engine choice (`pick_engine`, `--engine
auto`) and the command line's --engine choices all read it. "torch" runs the generator itself; every
other engine is an object whose `run(batch)` maps a float32 NCHW batch in [-1, 1] to the output batch,
with the translate contract of models.frames.RunsBatches, made by its record's `load`.

The table itself loads nothing heavy (the command line reads it for --help, and apply plans its outputs
before torch loads); an engine's own module loads when a model is loaded with it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable

from vidcycle.errors import DeviceError, UsageError


@dataclass(frozen=True)
class EngineRecord:
    """One engine: how to load it, whether it is here, what precision it runs on each device."""

    name: str                          # --engine NAME
    label: str                         # its name in messages ("ONNX Runtime")
    # (model path, torch.device, precision, loaded=(generator, ModelInfo)) -> an engine (run(batch),
    # `precision`, the translate contract); None: torch, the translator's own generator
    load: Callable | None = None
    available: Callable = lambda: True            # installed here: `auto` picks only what is
    require: Callable = lambda: None              # raises DeviceError naming the install when it is missing
    # the one precision it runs on each device type ("cpu", "cuda"); empty: any the translator offers
    precisions: dict = field(default_factory=dict)
    auto_for: tuple = ()               # (device type, precision) where `auto` picks it: measured faster there
    cpu_batch: int | None = None       # frames per forward on the CPU; None: the translator's per precision

    def precision_on(self, device_type: str) -> str | None:
        return self.precisions.get(device_type)


def _onnxruntime_here() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _require_onnxruntime() -> None:
    from vidcycle.runtime.onnx_export import require  # lazy: it imports torch; the table is read without it
    require("onnxruntime")


def _load_onnxruntime(path, device, precision: str, loaded=None):
    from vidcycle.runtime.onnx_engine import load_engine  # lazy: onnxruntime and torch load with a model only
    return load_engine(path, device, precision, loaded=loaded, precisions=_TABLE["onnxruntime"].precisions)


_TABLE: dict[str, EngineRecord] = {
    "torch": EngineRecord("torch", "torch"),
    # fp16 on CUDA, fp32 on the CPU: what its checked exports are; auto picks it for float32 on the CPU,
    # where it was measured faster than torch (benchmarks/README.md, "Which engine `auto` picks")
    "onnxruntime": EngineRecord("onnxruntime", "ONNX Runtime", load=_load_onnxruntime, available=_onnxruntime_here,
                                require=_require_onnxruntime, precisions={"cuda": "fp16", "cpu": "fp32"},
                                auto_for=(("cpu", "fp32"),), cpu_batch=4),
}


def register(record: EngineRecord) -> EngineRecord:
    """Add an engine (or replace one of the same name); returns the record."""
    _TABLE[record.name] = record
    return record


def engine_names() -> tuple:
    """What --engine takes: auto, then every engine of the table."""
    return ("auto", *_TABLE)


def engine_record(name: str) -> EngineRecord:
    """Raises UsageError for a name no engine has."""
    if name not in _TABLE:
        raise UsageError(f"unknown engine {name!r}; use {', '.join(engine_names())}")
    return _TABLE[name]


def pick_engine(choice: str, device, precision: str = "auto") -> str:
    """Which engine runs a model: as chosen, or for `auto` the first whose record says it was measured faster
    for this device and precision (torch on CUDA and in bf16, ONNX Runtime for float32 on the CPU), among
    those installed; torch otherwise.

    Raises UsageError (unknown choice), DeviceError (an engine asked for but missing, or a precision it
    does not run).
    """
    from vidcycle.runtime.device import pick_precision, precision_name  # lazy: the table is read before torch

    if choice != "auto":
        record = engine_record(choice)
        record.require()
        wanted = record.precision_on(device.type)
        if wanted and precision not in ("auto", wanted):
            raise DeviceError(f"{record.label} runs {wanted} on {device.type}; use precision 'auto' or '{wanted}' "
                              f"(--precision), or engine 'torch' (--engine torch) for {precision}")
        return choice
    chosen = (device.type, precision_name(pick_precision(precision, device)))
    return next((record.name for record in _TABLE.values() if chosen in record.auto_for and record.available()),
                "torch")
