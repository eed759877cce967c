"""PatchNCE (Park, Efros, Zhang and Zhu, "Contrastive Learning for Unpaired Image-to-Image Translation",
ECCV 2020): a patch of the output should be closer to the input patch at the same place than to the
input's other patches, in the generator's own encoder features projected by a small MLP head.

As their code computes it: features of the input and of the output from the same encoder layers, the
same random positions in both, a two-layer MLP per layer, L2-normalised; per output patch a softmax
over its positive (the input patch at its place) and the input's other sampled patches (negatives from
the same image only), at temperature tau; cross-entropy with the positive as the class, averaged over
patches, then over layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vidcycle.models.nets import ResnetGenerator, pad_to_multiple
from vidcycle.training.recipe import FIRST_DOWNSAMPLING, SECOND_DOWNSAMPLING


def layer_channels(ngf: int, layers: tuple) -> list[int]:
    """Channels of each layer's output: RGB from the pad, then ngf, 2 ngf, 4 ngf (the ResNet layer list's,
    which models.nets.require_resnet_layers checks a generator keeps)."""
    def channels(index):
        if index == 0:
            return 3
        if index < FIRST_DOWNSAMPLING:
            return ngf
        return ngf * 2 if index < SECOND_DOWNSAMPLING else ngf * 4
    return [channels(layer) for layer in layers]


def encoder_features(generator: ResnetGenerator, images: torch.Tensor, layers: tuple) -> list[torch.Tensor]:
    """The outputs of the generator's layers `layers` (indices into its layer list) for `images`, padded
    as its forward pads them; only the layers up to the last one asked for run."""
    wanted, features = set(layers), []
    out = pad_to_multiple(images, 4)
    for index, layer in enumerate(generator.model[:max(layers) + 1]):
        out = layer(out)
        if index in wanted:
            features.append(out)
    return features


class FeatureGenerator(nn.Module):
    """A generator whose forward also gives encoder features (forward(x, layers)), so one
    DistributedDataParallel wrapper covers both uses and its gradients stay in sync."""

    def __init__(self, generator: ResnetGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, images: torch.Tensor, layers: tuple | None = None):
        if layers is None:
            return self.generator(images)
        return encoder_features(self.generator, images, layers)


class ProjectionHead(nn.Module):
    """CUT's PatchSampleF: per layer, the features at sampled positions through Linear-ReLU-Linear, then
    L2-normalised. Trained with the generator, kept in checkpoints, never exported."""

    def __init__(self, channels: list[int], width: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width))
                                  for c in channels)
        for module in self.modules():  # CUT's default init: xavier normal, gain 0.02
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight, gain=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[torch.Tensor], patches: int, positions: list | None = None,
                generator: torch.Generator | None = None):
        """([B * P, width] per layer, the positions used). New random positions (from `generator`, a CPU
        generator, or torch's) unless `positions` are given: the output's features are sampled where the
        input's were."""
        projected, used = [], []
        for n, (feature, mlp) in enumerate(zip(features, self.mlps)):
            flat = feature.flatten(2).transpose(1, 2)  # B, H*W, C
            if positions is None:
                where = torch.randperm(flat.shape[1], generator=generator)[:min(patches, flat.shape[1])].to(flat.device)
            else:
                where = positions[n]
            sampled = flat[:, where, :].flatten(0, 1)
            projected.append(F.normalize(mlp(sampled).float(), dim=1, eps=1e-7))
            used.append(where)
        return projected, used


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, batch: int, temperature: float) -> torch.Tensor:
    """Per query patch, -log softmax of its positive among the key patches of the same image, each
    similarity over tau; [B * P] losses. `query` (output features) and `key` (input features, no gradient)
    are [B * P, C], unit vectors, image by image."""
    key = key.detach()
    query, key = query.float(), key.float()
    patches = query.shape[0] // batch
    q, k = query.view(batch, patches, -1), key.view(batch, patches, -1)
    positive = (q * k).sum(dim=2, keepdim=True)                          # B, P, 1
    negatives = torch.bmm(q, k.transpose(1, 2))                           # B, P, P
    same = torch.eye(patches, dtype=torch.bool, device=q.device)[None]
    negatives = negatives.masked_fill(same, float("-inf"))                # a patch is not its own negative
    logits = torch.cat([positive, negatives], dim=2).flatten(0, 1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target, reduction="none")
