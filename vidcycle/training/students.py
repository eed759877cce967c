"""Distillation's method: a cheaper student built for a trained teacher, the step that teaches it to
reproduce the teacher's output, and how faithfully it does on frames it never saw.

After GAN Compression (Li et al., CVPR 2020): the student sees the teacher's
input and learns the teacher's output, so no second domain, discriminator or
cycle is needed. The loss is an L1 term plus a structural one (1 - SSIM), and
optionally GAN Compression's feature distillation: student block activations,
mapped by a learnt 1x1 convolution to the teacher's width, against the
teacher's (recipes/distill.toml says which terms measured better).

Optionally too, a stability term after Eilertsen, Mantiuk and Unger (CVPR 2019,
"Single-frame Regularization for Temporally Stable CNNs"): each crop is moved by
a small random camera motion M (shift, turn, zoom) and the student is asked for
S(M(x)) = M(S(x)). A still photo thus teaches what a panning clip needs: an
output that moves with the picture instead of shimmering.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vidcycle.errors import RecipeError
from vidcycle.metrics import psnr, ssim as frame_ssim
from vidcycle.models.frames import batch_to_frames, frames_to_batch
from vidcycle.models.nets import (GENERATOR_KINDS, GeneratorSpec, ResnetGenerator, build_generator, count_gmacs,
                                  require_resnet_layers)
from vidcycle.training.amp import Amp
from vidcycle.training.gan import pads_keep_dtype
from vidcycle.training.losses import SSIM_WINDOW, move, moved_output_loss, random_motions, ssim
from vidcycle.training.recipe import FIRST_BLOCK, MOTION_MARGIN

LOSS_NAMES = ("l1", "ssim", "features", "stability")
LOSS_PANELS = {"distillation (weighted terms)": LOSS_NAMES}


# ---------------------------------------------------------------- the student

def student_spec(recipe, teacher: GeneratorSpec) -> GeneratorSpec:
    """The student's architecture: the recipe's, with the teacher's channels in and out.

    Raises RecipeError when the student's kind is unknown or it is not cheaper than the teacher, or when
    feature distillation is asked for with kept teacher outputs; ModelError when feature distillation is
    asked of a generator kind without the ResNet layer list.
    """
    student = recipe.student
    if student.kind not in GENERATOR_KINDS:
        raise RecipeError(f"student.kind: {student.kind!r} is not one of {', '.join(GENERATOR_KINDS)}")
    spec = GeneratorSpec(n_blocks=student.n_blocks, ngf=student.ngf, in_channels=teacher.in_channels,
                         out_channels=teacher.out_channels, kind=student.kind)
    check_cheaper(spec, teacher)
    if recipe.loss.ssim > 0 and recipe.data.crop_size < SSIM_WINDOW:
        raise RecipeError(f"loss.ssim compares {SSIM_WINDOW}x{SSIM_WINDOW} windows; data.crop_size "
                          f"{recipe.data.crop_size} is smaller: raise it, or set loss.ssim = 0")
    if recipe.loss.features > 0 and recipe.views:
        raise RecipeError("loss.features needs the teacher's activations on every crop, which kept outputs "
                          "do not have: set views = 0 with it")
    if recipe.loss.features > 0:  # FeatureMaps hooks residual blocks by their index in the ResNet layer list
        require_resnet_layers(spec, "loss.features (the student's blocks)")
        require_resnet_layers(teacher, "loss.features (the teacher's blocks)")
    return spec


def check_cheaper(student: GeneratorSpec, teacher: GeneratorSpec) -> tuple[float, float]:
    """(student, teacher) GMAC per 256x256 frame. Raises RecipeError when the student is not cheaper."""
    cost, teacher_cost = count_gmacs(student), count_gmacs(teacher)
    if cost >= teacher_cost:
        raise RecipeError(f"student {student.label} costs {cost:.2f} GMAC per 256x256 frame, no less than "
                          f"its teacher {teacher.label} ({teacher_cost:.2f}): a student must be cheaper; lower "
                          f"student.ngf or student.n_blocks, or set student.kind = \"mobile\"")
    return cost, teacher_cost


def build_student(spec: GeneratorSpec, seed: int) -> ResnetGenerator:
    """The student, initialised N(0, 0.02) from the seed, padding in its input's dtype under autocast."""
    torch.manual_seed(seed)
    return pads_keep_dtype(build_generator(spec))


class FeatureMaps(nn.Module):
    """GAN Compression's feature distillation: at evenly spaced residual blocks (a third, two thirds and
    all of the way), the student's activations mapped by a 1x1 convolution to the teacher's width. Both
    generators must keep the ResNet layer list (models.nets.require_resnet_layers, checked in
    student_spec): blocks are found by index, from FIRST_BLOCK on."""

    def __init__(self, student: ResnetGenerator, teacher: ResnetGenerator):
        super().__init__()
        self.pairs = list(zip(_matched_blocks(student.spec.n_blocks), _matched_blocks(teacher.spec.n_blocks)))
        self.maps = nn.ModuleList(nn.Conv2d(student.spec.ngf * 4, teacher.spec.ngf * 4, 1) for _ in self.pairs)
        self.student_out: dict[int, torch.Tensor] = {}
        self.teacher_out: dict[int, torch.Tensor] = {}
        for s, t in self.pairs:
            student.model[s].register_forward_hook(self._keeper(self.student_out, s))
            teacher.model[t].register_forward_hook(self._keeper(self.teacher_out, t))

    @staticmethod
    def _keeper(store: dict, index: int):
        def keep(_module, _inputs, output):
            store[index] = output
        return keep

    def loss(self) -> torch.Tensor:
        terms = [F.mse_loss(conv(self.student_out[s].float()), self.teacher_out[t].float())
                 for conv, (s, t) in zip(self.maps, self.pairs)]
        return torch.stack(terms).mean()


def _matched_blocks(n_blocks: int) -> list[int]:
    return [FIRST_BLOCK + max(0, round(n_blocks * k / 3) - 1) for k in (1, 2, 3)]


# ---------------------------------------------------------------- the step

class TeacherTargets:
    """The teacher's output on each training crop, its weights in the run's precision.

    With `keep`, crops come as (frame index, view) that repeat every few epochs
    (vidcycle.training.data.FrameDataset's views): the teacher runs on each crop alone, so a
    crop's target never depends on what it was batched with (a resumed run computes
    the same numbers), and the target is kept, as uint8 like a translated frame,
    while `room` bytes last. Without, the teacher runs on the whole batch every time
    (feature distillation needs its activations on every crop).
    """

    def __init__(self, teacher: nn.Module, keep: bool, room: int = 1 << 30):
        self.teacher, self.keep, self.room = teacher, keep, room
        self.dtype = next(teacher.parameters()).dtype
        self.kept: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        real_x = batch["x"]
        if not self.keep:
            return self.teacher(real_x.to(self.dtype)).float()
        targets = []
        for image, key in zip(real_x, zip(batch["x_index"].tolist(), batch["view"].tolist())):
            target = self.kept.get(key)
            if target is None:
                target = batch_to_frames(self.teacher(image[None].to(self.dtype)))[0]
                if target.numel() <= self.room:
                    self.kept[key], self.room = target, self.room - target.numel()
            targets.append(target)
        return frames_to_batch(torch.stack(targets), torch.float32)


def distill_step(student: nn.Module, targets: TeacherTargets, features: FeatureMaps | None, optimizer,
                 batch: dict, loss, amp: Amp, motions: torch.Generator | None = None) -> dict:
    """One distillation iteration; returns each weighted loss as a float.

    The teacher's outputs come from `targets` without gradients; the student trains
    under `amp`. `loss` is the recipe's DistillLossConfig; `motions` draws the
    stability term's camera motions (needed when loss.stability > 0).
    """
    target = targets(batch)                                                    # T(x)
    optimizer.zero_grad(set_to_none=True)
    with amp.autocast():
        fake = student(batch["x"])                                             # S(x)
        loss_l1 = F.l1_loss(fake.float(), target) * loss.l1                    # ||S(x) - T(x)||_1
        loss_ssim = (1 - ssim(fake, target)) * loss.ssim if loss.ssim > 0 else target.new_zeros(())
        loss_features = features.loss() * loss.features if features is not None else target.new_zeros(())
        loss_stability = (stability_loss(student, batch["x"], fake, motions) * loss.stability
                          if loss.stability > 0 else target.new_zeros(()))      # ||S(M(x)) - M(S(x))||_1
        total = loss_l1 + loss_ssim + loss_features + loss_stability
    amp.backward_step(total, optimizer)
    amp.end_step()
    values = torch.stack([loss_l1, loss_ssim, loss_features, loss_stability]).detach().float().tolist()
    return dict(zip(LOSS_NAMES, values))


def stability_loss(student: nn.Module, x: torch.Tensor, fake: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """||S(M(x)) - M(S(x))||_1 inside the margin, for one random motion M per crop; `fake` is S(x)."""
    grids = random_motions(x.shape[0], x.shape[2], x.shape[3], generator)
    return moved_output_loss(student(move(x, grids)), fake, grids, MOTION_MARGIN)


# ---------------------------------------------------------------- fidelity

@torch.no_grad()
def translate_frames(net: nn.Module, frames: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Each uint8 HxWx3 frame through `net` in float32, one at a time (frames may differ in size)."""
    net.eval()
    out = []
    for frame in frames:
        batch = frames_to_batch(torch.from_numpy(frame)[None].to(device), torch.float32)
        out.append(batch_to_frames(net(batch)).cpu().numpy()[0])
    return out


def fidelity(student: nn.Module, frames: list[np.ndarray], targets: list[np.ndarray],
             device: torch.device) -> dict:
    """The student's PSNR (dB) and SSIM against the teacher's outputs `targets` (float32 both), as
    `vidcycle eval` scores: the mean over frames."""
    made = translate_frames(student, frames, device)
    student.train()
    return {"psnr": round(float(np.mean([psnr(m, t) for m, t in zip(made, targets)])), 3),
            "ssim": round(float(np.mean([frame_ssim(m, t) for m, t in zip(made, targets)])), 4),
            "frames": len(frames)}
