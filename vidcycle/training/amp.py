"""The precision of a training step: autocast to bf16 or fp16 (fp16 with a grad scaler), or float32."""

import contextlib

import torch


class Amp:
    """Precision of a step: autocast to bf16/fp16 (fp16 with a grad scaler), or plain float32."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)

    def end_step(self) -> None:
        if self.scaler is not None:
            self.scaler.update()
