"""Running a generator on frames, on its device and in its precision.

Frames (vidcycle.frames) travel to the device as uint8 (pinned and non-blocking on
CUDA) and are normalised, padded, run, cropped and quantised there.
"""

import numpy as np
import torch

from .device import pick_device, pick_precision, precision_name
from .frames import as_frame_array, batch_to_frames, frames_to_batch
from .modelfile import ModelInfo, load_model_file, load_reference_checkpoint
from .nets import ResnetGenerator
from .store import resolve_model_path


def default_batch_size(device: torch.device, width: int, height: int) -> int:
    """Frames per forward: on CUDA about 8 at 1080p, more for smaller frames (at most 32); 4 on CPU."""
    if device.type == "cuda":
        return int(max(1, min(32, 8 * 1920 * 1080 // max(1, width * height))))
    return 4


class Translator:
    """A loaded generator, ready to translate frames on its device in its precision."""

    def __init__(self, generator: ResnetGenerator, info: ModelInfo, device="auto", precision="auto",
                 name: str = ""):
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.info = info
        self.name = name
        # Weights are cast once (not per call, as autocast would): on this CPU that alone was the
        # difference between 1.4x and 1.7x over float32 for the 9-block generator.
        # channels_last suits cuDNN; on the CPU it made the 9-block generator ~9% slower at 320x240
        # (instance norm copies every activation back to contiguous and the next conv copies it again).
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.generator = generator.eval().to(self.device, self.dtype, memory_format=self.memory_format)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def translate(self, frame: np.ndarray) -> np.ndarray:
        """One uint8 HxWx3 RGB frame of any size -> its translation, same size."""
        return self.translate_batch(np.asarray(frame)[None])[0]

    def translate_batch(self, frames) -> np.ndarray:
        """A sequence or NxHxWx3 array of same-sized uint8 RGB frames -> NxHxWx3 uint8."""
        array = as_frame_array(frames)
        result = self.translate_tensor(torch.from_numpy(array))
        return result.numpy()

    @torch.inference_mode()
    def translate_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC tensor (CPU) -> uint8 NHWC tensor (CPU)."""
        if self.device.type == "cuda":
            frames = frames.pin_memory().to(self.device, non_blocking=True)
        batch = frames_to_batch(frames, self.dtype).contiguous(memory_format=self.memory_format)
        return batch_to_frames(self.generator(batch)).cpu()


def load_model(name_or_path, device=None, precision="auto") -> Translator:
    """Load a model by store name or file path (`.safetensors`, or a reference `.pth`).

    Raises ModelError (unknown name, unreadable or unsafe file) or DeviceError.
    """
    path = resolve_model_path(name_or_path)
    if path.suffix in (".pth", ".pt"):
        generator, spec = load_reference_checkpoint(path)
        info = ModelInfo(spec=spec, source=f"reference checkpoint {path.name}")
    else:
        generator, info = load_model_file(path)
    return Translator(generator, info, device or "auto", precision, name=path.stem)
