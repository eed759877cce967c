"""Running a generator on frames, on its device, in its precision and engine, under a memory budget.

Frames (vidcycle.models.frames) travel to the device as uint8 (pinned and non-blocking
on CUDA) and are normalised, padded, run, cropped and quantised there. Each
frame size gets a plan from the budget (vidcycle.runtime.memory): whole frames in
batches, or, when one frame does not fit, seamless tiles (vidcycle.runtime.tiling).
On CUDA the batch is also capped so no activation needs 64-bit indexing,
short batches are padded to the planned size (cuDNN keeps its chosen kernels;
instance norm works per sample, so results are the same), an out-of-memory
error halves the batch and tries again (then tiles), and the first fp16
output is checked for overflow.
"""

import logging
import math

import torch

from vidcycle.errors import DeviceError, ModelError, UsageError
from vidcycle.models.frames import TranslatesFrames, batch_to_frames, frames_to_batch
from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.store import load_generator, resolve_model_path
from vidcycle.runtime.device import cuda_has_native_bf16, pick_device, pick_precision, precision_name
from vidcycle.runtime.convolutions import use_faster_inference_convolutions
from vidcycle.runtime.engines import engine_record, pick_engine
from vidcycle.runtime.memory import Plan, default_budget, estimate_run, format_size, parse_budget, plan, quick_fit
from vidcycle.runtime.winograd import WinogradConv2d

log = logging.getLogger("vidcycle")
# Frames per forward on the CPU: the fastest measured for each engine and precision
# (benchmarks/README.md, "Frames per forward on the CPU").
CPU_BATCH = {torch.float32: 1, torch.bfloat16: 4}  # torch's; another engine's is in its record
CUDA_MAX_BATCH = 32
INDEX_LIMIT = 2 ** 31 - 1  # CUDA kernels (reflection_pad2d among them) refuse tensors with more elements


class Translator(TranslatesFrames):
    """A loaded generator, ready to translate frames of any size on its device in its precision.

    `max_memory` (bytes, or text such as "3G"): the most the network's working
    memory may take; default: a safe share of what is free now (vidcycle.runtime.memory).
    `engine`: None to run the generator with torch, or an engine of the table
    vidcycle.runtime.engines (`engine_name` names it), whose run(float NCHW batch)
    returns the output batch; frames that need tiles always run with torch. What the user should know (a halved
    batch, tiles after running out of memory, the fp16 fallback) goes to the "vidcycle"
    logger as a warning.
    """

    def __init__(self, generator, info: ModelInfo, device="auto", precision="auto", name: str = "",
                 max_memory=None, engine=None, engine_name: str = "torch"):
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.info, self.name = info, name
        # Weights are cast once (not per call, as autocast would). Contiguous layout on every device:
        # instance norm hands back contiguous tensors, so channels_last only added a copy before each
        # convolution (benchmarks/README.md, "Layouts and the distillation precision").
        self.generator = generator.eval().to(self.device, self.dtype)
        use_faster_inference_convolutions(self.generator, self.device, self.dtype)
        self.budget = parse_budget(max_memory) if max_memory is not None else default_budget(self.device)
        self.pad_batches = self.device.type == "cuda"
        self._plans: dict = {}
        self._tiler = None
        self._checked = self.dtype != torch.float16
        self.engine = engine
        self.engine_name = engine_name if engine is not None else "torch"

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    @property
    def winograd(self) -> bool:
        """Whether the generator runs any of its convolutions by Winograd's (runtime/winograd.py)."""
        return any(isinstance(module, WinogradConv2d) for module in self.generator.modules())

    def describe(self) -> str:
        """One line: what runs where, e.g. 'torch bf16 on cpu (2 threads), memory budget 9.8 GiB'."""
        threads = f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""
        convolutions = " (Winograd's 3x3 convolutions)" if self.winograd and self.engine is None else ""
        return (f"{self.engine_name} {self.precision}{convolutions} on {self.device}{threads}, "
                f"memory budget {format_size(self.budget)}")

    @torch.inference_mode()
    def translate_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC tensor (CPU) -> uint8 NHWC tensor (CPU), in as many runs as the plan needs.

        Raises DeviceError when not even tiles fit the memory budget.
        """
        height, width = frames.shape[1:3]
        return self._run_all(frames, height, width)

    def _run_all(self, frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
        parts, start = [], 0
        while start < len(frames):
            chosen = self.plan(height, width)  # read each time: running out of memory changes it
            parts.append(self._run(frames[start:start + chosen.batch], chosen))
            start += chosen.batch
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch_size(self, width: int, height: int) -> int:
        """Frames per forward for a clip of this size: what the memory plan allows."""
        return self.plan(height, width).batch

    def plan(self, height: int, width: int) -> Plan:
        """The batch and tiles for frames of this size (computed once per size)."""
        key = (height, width)
        if key not in self._plans:
            self._plans[key] = self._make_plan(height, width)
        return self._plans[key]

    def _make_plan(self, height: int, width: int) -> Plan:
        if self.device.type == "cuda":
            wanted = CUDA_MAX_BATCH
        else:
            wanted = engine_record(self.engine_name).cpu_batch or CPU_BATCH.get(self.dtype, 1)
        cap = self.index_cap(height, width)
        if cap >= 1 and quick_fit(self.generator, min(wanted, cap), height, width, self.dtype, self.budget):
            return Plan(min(wanted, cap), None)  # plainly fits: no need for the exact estimate
        max_tile = None if cap >= 1 else self._index_safe_tile()
        return plan(self.budget, (height, width), self.tiler, self.dtype, self.device.type,
                    max_batch=max(1, min(wanted, cap)), max_tile=max_tile)

    def index_cap(self, height: int, width: int) -> int:
        """On CUDA, the most frames of this size whose widest activation stays within 32-bit indexing."""
        if self.device.type != "cuda":
            return CUDA_MAX_BATCH
        return index_cap(full_resolution_channels(self.generator), height, width)

    def _index_safe_tile(self) -> int:
        return index_safe_tile(full_resolution_channels(self.generator))

    @property
    def tiler(self):
        from vidcycle.runtime.tiling import TiledRunner  # built on first need: it probes the network once
        if self._tiler is None:
            self._tiler = TiledRunner(self.generator)
        return self._tiler

    # -- running one batch

    def _run(self, frames: torch.Tensor, chosen: Plan) -> torch.Tensor:
        if chosen.tile is not None:
            return self._tiled(frames, chosen)
        output = self._unless_out_of_memory(self._forward, frames, chosen.batch)
        return output if output is not None else self._after_out_of_memory(frames, chosen)

    def _unless_out_of_memory(self, run, *args):
        """run(*args), or None when the device ran out of memory. The retry must come after the handler:
        the error's traceback holds the failed attempt's tensors."""
        try:
            return run(*args)
        except torch.cuda.OutOfMemoryError:
            pass
        self._free_cached()
        return None

    def _after_out_of_memory(self, frames: torch.Tensor, chosen: Plan) -> torch.Tensor:
        """Halve the batch (and keep it halved for this size); at batch 1, tiles planned for what the
        whole frame was estimated to need, halved while the device still runs out."""
        height, width = frames.shape[1:3]
        if chosen.batch > 1:
            smaller = Plan(max(1, chosen.batch // 2), None)
            self._plans[(height, width)] = smaller
            log.warning("out of memory at %d frames of %dx%d: now %d", chosen.batch, width, height, smaller.batch)
            return self._run_all(frames, height, width)
        budget = estimate_run(self.tiler, (1, 3, height, width), self.dtype, self.device.type)
        while True:
            try:
                tiled = plan(budget, (height, width), self.tiler, self.dtype, self.device.type, max_batch=1,
                             max_tile=max(8, min(height, width) - 8))
            except DeviceError:
                raise DeviceError(f"out of memory translating one {width}x{height} frame on {self.device}, even "
                                  f"in tiles; free the device or lower max_memory (--max-memory)") from None
            result = self._unless_out_of_memory(self._tiled, frames, tiled)
            if result is not None:
                self._plans[(height, width)] = tiled
                log.warning("out of memory on one %dx%d frame: now in %d-pixel tiles", width, height, tiled.tile)
                return result
            budget //= 2

    def _free_cached(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _tiled(self, frames: torch.Tensor, chosen: Plan) -> torch.Tensor:
        outputs = []
        for frame in frames.split(1):
            batch = frames_to_batch(self._to_device(frame), self.dtype)
            result = self.tiler(batch, chosen.tile, chosen.overlap, chosen.keep_bytes)
            outputs.append(batch_to_frames(result).cpu())
        return torch.cat(outputs)

    def _forward(self, frames: torch.Tensor, planned: int) -> torch.Tensor:
        count = len(frames)
        padded = frames
        if self.pad_batches and count < planned:  # the shape cuDNN tuned for; extra frames are dropped
            padded = torch.cat([frames, frames[-1:].expand(planned - count, *frames.shape[1:])])
        batch = frames_to_batch(self._to_device(padded), self.dtype)
        output = self.engine.run(batch) if self.engine is not None else self.generator(batch)
        if not self._checked:
            self._checked = True
            if not bool(torch.isfinite(output).all()):
                self._leave_fp16()
                return self._forward(frames, planned)
        return batch_to_frames(output[:count]).cpu()

    def _to_device(self, frames: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return frames.pin_memory().to(self.device, non_blocking=True)
        return frames

    def _leave_fp16(self) -> None:
        """The first fp16 output overflowed (inf or NaN): bf16 where the GPU has it, else float32."""
        fallback = torch.bfloat16 if self.device.type == "cuda" and cuda_has_native_bf16(self.device) \
            else torch.float32
        log.warning("fp16 overflowed in this model (non-finite output); running %s instead",
                    precision_name(fallback))
        self.dtype, self.engine, self.engine_name = fallback, None, "torch"
        self.generator.to(fallback)
        self._plans.clear()


def full_resolution_channels(generator) -> int:
    """Channels of the widest full-resolution activation: the first convolution's output, and the last
    upsampling's (the generators here keep both at full resolution)."""
    convolutions = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    return max([m.out_channels for m in convolutions[:1] + convolutions[-2:-1]] + [3])


def index_cap(channels: int, height: int, width: int) -> int:
    """Frames of this size per batch whose activations (with the generator's padding) stay addressable
    with 32-bit indices, as CUDA's reflection_pad2d requires: N x C x H x W < 2^31."""
    return INDEX_LIMIT // (channels * (height + 8) * (width + 8))


def index_safe_tile(channels: int) -> int:
    """The largest tile side (a multiple of 8) that one activation of `channels` can have on CUDA."""
    return (math.isqrt(INDEX_LIMIT // channels) - 8) // 8 * 8


def load_model(name_or_path, device="auto", precision="auto", max_memory=None, engine: str = "auto") -> Translator:
    """Load a model by store name or file path (`.safetensors`, or a reference `.pth`).

    `engine`: auto or a name of the table vidcycle.runtime.engines (torch, onnxruntime; auto: the one
    measured faster for this device and precision). Raises ModelError (unknown name, unreadable or
    unsafe file), DeviceError, UsageError.
    """
    path = resolve_model_path(name_or_path)
    generator, info = load_generator(path)
    device = pick_device(device or "auto")
    choice = pick_engine(engine, device, precision)
    record = engine_record(choice)
    if record.load is None:
        return Translator(generator, info, device, precision, name=path.stem, max_memory=max_memory)
    wanted = record.precision_on(device.type) or precision
    try:
        runtime = record.load(path, device, wanted, loaded=(generator, info))
    except (ModelError, UsageError) as error:
        if engine != "auto":
            raise
        log.warning("%s cannot run this model (%s); torch runs it instead", record.label, error)
        return Translator(generator, info, device, precision, name=path.stem, max_memory=max_memory)
    return Translator(generator, info, device, runtime.precision, name=path.stem, max_memory=max_memory,
                      engine=runtime, engine_name=choice)
