"""The CycleGAN objective's terms: adversarial (LSGAN or vanilla), cycle, identity, and a temporal term;
and distillation's: SSIM between a student's output and its teacher's.

Every loss is computed in float32 whatever precision the networks ran in, so
reduced-precision training changes only the convolutions, never the sums.
"""

import functools

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
