"""KID at checkpoints: how far G's translations of held-out X frames are from held-out Y frames, on the
Inception features `vidcycle eval --y` uses, so the loss curves show when a model stopped improving
(the GAN losses themselves do not: they balance, whatever the quality)."""

from __future__ import annotations

from pathlib import Path

import torch

from vidcycle.models.frames import batch_to_frames
from vidcycle.quality.fidelity import InceptionFeatures, kid

KID_FRAMES = 32     # frames per domain held out of training for the score (lent when a set has < 5x)
KID_PANEL = {"KID x1000, G(held-out x) vs held-out y (lower is better)": ("kid_x1000",)}


class CheckpointKid:
    """Y's features once; at each checkpoint, G's translations of the X frames scored against them."""

    def __init__(self, weights: Path, held_x: torch.Tensor, held_y: torch.Tensor, device: torch.device):
        self.features = InceptionFeatures(weights, str(device))
        self.held_x = held_x
        self.real = self.features(list(batch_to_frames(held_y).numpy()))

    @torch.no_grad()
    def score(self, generator: torch.nn.Module, device: torch.device, amp) -> float:
        """KID x 1000 (unbiased MMD^2, cubic kernel) of G(x) against y."""
        with amp.autocast():
            made = torch.cat([generator(batch.to(device)).float().cpu() for batch in self.held_x.split(8)])
        mean, _, _ = kid(self.real, self.features(list(batch_to_frames(made).numpy())))
        return mean * 1000
