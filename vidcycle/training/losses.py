"""The CycleGAN objective's terms: adversarial (LSGAN or vanilla), cycle, identity, and a temporal term;
distillation's: SSIM between a student's output and its teacher's; and the stability term both may use
(a net's output should move with its input under a small camera motion).

Every loss is computed in float32 whatever precision the networks ran in, so
reduced-precision training changes only the convolutions, never the sums.
"""

import functools
import math

import torch
from torch.nn import functional as F

GAN_MODES = ("lsgan", "vanilla")


def gan_loss(prediction: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of a patch-score map against the label "real" (1) or "fake" (0).

    lsgan is the paper's least-squares loss, (D(.) - label)^2 averaged over
    patches; vanilla is the log-likelihood loss of the original GAN, on logits.
    Raises ValueError for an unknown mode (recipes are validated before this).
    """
    prediction = prediction.float()
    target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(prediction, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"unknown GAN loss mode {mode!r}; use one of {GAN_MODES}")


def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """||F(G(x)) - x||_1, mean over pixels (the paper's L_cyc for one direction)."""
    return F.l1_loss(reconstructed.float(), real.float())


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """||G(y) - y||_1: a generator fed its own target domain should leave the image alone."""
    return F.l1_loss(same.float(), real.float())


def temporal_loss(fake: torch.Tensor, fake_next: torch.Tensor, real: torch.Tensor, real_next: torch.Tensor,
                  has_next: torch.Tensor) -> torch.Tensor:
    """|| (G(x_next) - G(x)) - (x_next - x) ||_1 over the samples that have a next frame.

    A flow-free stand-in for the flow-warped temporal losses of video style
    transfer: what changes between two consecutive source frames should change
    the same way in their translations, so static regions stay static and
    frame-to-frame flicker is penalised. Samples without a neighbour (photos,
    a clip's last kept frame) contribute nothing; with none in the batch the
    loss is an exact zero that still belongs to the graph.
    """
    mask = has_next.to(device=fake.device, dtype=torch.bool).reshape(-1)
    if not bool(mask.any()):
        return fake.float().sum() * 0.0
    change_out = fake_next.float()[mask] - fake.float()[mask]
    change_in = real_next.float()[mask] - real.float()[mask]
    return F.l1_loss(change_out, change_in)


# The camera motion between two frames of a pan or a handheld shot, at the training crop's scale: up to
# MOTION_SHIFT pixels in each direction, MOTION_TURN degrees and MOTION_ZOOM of scale (Eilertsen et al.
# draw translation, rotation and zoom alike); the margin of moved_output_loss (training.recipe's
# MOTION_MARGIN, which recipes are checked against) is left out of the comparison.
MOTION_SHIFT, MOTION_TURN, MOTION_ZOOM = 2.0, 1.0, 0.02


def random_motions(count: int, height: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """`count` sampling grids (N, H, W, 2) for grid_sample, each a small random shift, turn and zoom."""
    shift_x, shift_y, turn, zoom = (torch.rand(4, count, generator=generator) * 2 - 1).unbind(0)
    angle = turn * math.radians(MOTION_TURN)
    cos, sin = torch.cos(angle) / (1 + zoom * MOTION_ZOOM), torch.sin(angle) / (1 + zoom * MOTION_ZOOM)
    theta = torch.stack([torch.stack([cos, -sin * height / width, shift_x * MOTION_SHIFT * 2 / width], 1),
                         torch.stack([sin * width / height, cos, shift_y * MOTION_SHIFT * 2 / height], 1)], 1)
    return F.affine_grid(theta, [count, 1, height, width], align_corners=False)


def move(images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """`images` (N, C, H, W) resampled along `grids` (bilinear, edges repeated)."""
    return F.grid_sample(images, grids.to(images.device, images.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


def moved_output_loss(moved_out: torch.Tensor, out: torch.Tensor, grids: torch.Tensor, margin: int) -> torch.Tensor:
    """||N(M(x)) - M(N(x))||_1 `margin` pixels in from each edge (Eilertsen, Mantiuk and Unger, CVPR 2019):
    `moved_out` is N(M(x)), `out` is N(x), `grids` the motions M (random_motions)."""
    inside = (Ellipsis, slice(margin, -margin), slice(margin, -margin))
    return F.l1_loss(moved_out.float()[inside], move(out.float(), grids)[inside])


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # as vidcycle.quality.evaluation measures it


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of two NCHW batches in [-1, 1], differentiable.

    The definition `vidcycle eval` scores with (vidcycle.quality.evaluation.ssim): an
    11x11 Gaussian window (sigma 1.5), each channel apart, K1 0.01 and K2 0.03
    of the value range, positions where the window would leave the image left
    out.
    """
    with torch.autocast(a.device.type, enabled=False):  # variances are differences of squares: float32 only
        return _ssim(a.float(), b.float())


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = (a + 1) / 2, (b + 1) / 2  # SSIM's luminance term is not shift-invariant: [0, 1]
    channels = a.shape[1]
    window = _gaussian_window(str(a.device)).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)
    blur = functools.partial(F.conv2d, weight=window, groups=channels)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean()


@functools.lru_cache(maxsize=4)
def _gaussian_window(device: str) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    line = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    line /= line.sum()
    return torch.outer(line, line).float().to(device)[None, None]
