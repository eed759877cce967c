"""Frames and batches: the one place where uint8 frames become network tensors and back.

A frame is a uint8 HxWx3 RGB array; a batch is a float NCHW tensor in [-1, 1].
Training data, sample grids and every inference engine convert here.
"""

import numpy as np
import torch

from vidcycle.errors import MediaError


def frames_to_batch(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], contiguous: a permuted view would hand the network a
    channels_last tensor, which ran the bf16 generator ~6% slower on the CPU."""
    return frames.permute(0, 3, 1, 2).to(dtype, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def batch_to_frames(batch: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounded."""
    scaled = (batch.float() + 1.0).mul_(127.5).round_().clamp_(0, 255)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1)


def as_frame_array(frames) -> np.ndarray:
    """A sequence or NxHxWx3 array of same-sized uint8 RGB frames as one contiguous array. Raises MediaError."""
    if isinstance(frames, np.ndarray):
        array = frames
    else:
        frames = list(frames)
        if not frames:
            raise MediaError("no frames to translate")
        shapes = {np.asarray(f).shape for f in frames}
        if len(shapes) > 1:
            raise MediaError(f"frames in one batch must share a size; got {sorted(shapes)}")
        array = np.stack([np.asarray(f) for f in frames])
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise MediaError(f"expected uint8 RGB frames (N x H x W x 3), got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


class TranslatesFrames:
    """The translate contract every way of running a generator shares (Translator, the engines):
    `translate_tensor` (uint8 NHWC tensor -> uint8 NHWC tensor) is the subclass's; one frame and a
    batch of frames go through it."""

    def translate_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def translate(self, frame: np.ndarray) -> np.ndarray:
        """One uint8 HxWx3 RGB frame of any size -> its translation, same size."""
        return self.translate_batch(np.asarray(frame)[None])[0]

    def translate_batch(self, frames) -> np.ndarray:
        """A sequence or NxHxWx3 array of same-sized uint8 RGB frames -> NxHxWx3 uint8."""
        return self.translate_tensor(torch.from_numpy(as_frame_array(frames))).numpy()


class RunsBatches(TranslatesFrames):
    """An engine's side of the contract: `run` (float32 NCHW batch in [-1, 1] -> the output batch) is the
    subclass's; frames are converted here, as everywhere else."""

    def run(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def translate_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        return batch_to_frames(self.run(frames_to_batch(frames.cpu(), torch.float32)))
