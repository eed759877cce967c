"""Comparing images: PSNR, SSIM and CIELAB colour error, the one definition of each.

On uint8 RGB frames (float arrays too, for PSNR):
- PSNR: 10 log10(peak^2 / MSE), MSE over all pixels and channels; identical images give +inf, and
  any NaN or infinity (an fp16 overflow) gives -inf, so no threshold passes it.
- SSIM: Wang et al. 2004, 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, L 255, computed on each
  RGB channel separately and averaged (per-channel mean); a 5-pixel border, where the window would
  reach past the image, is left out of the mean (as scikit-image does).
- Lab colour error: mean CIE76 delta E, the Euclidean distance in CIELAB after OpenCV's float
  conversion (RGB in [0, 1], D65; L in 0..100).
"""

import math

import cv2
import numpy as np

from vidcycle.errors import MediaError

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2

def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two same-sized arrays (uint8 frames: peak 255); +inf when
    identical, -inf when either holds NaN or infinity. Raises MediaError for different shapes."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if not math.isfinite(mse):
        return -math.inf
    return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity (Gaussian window, per RGB channel, averaged); 1.0 when identical."""
    _check_pair(a, b)
    x, y = a.astype(np.float64), b.astype(np.float64)
    blur = lambda image: cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA,
                                          borderType=cv2.BORDER_REFLECT)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x ** 2 + mu_y ** 2 + _C1) * (var_x + var_y + _C2))
    pad = SSIM_WINDOW // 2
    if min(ssim_map.shape[:2]) > 2 * pad:
        ssim_map = ssim_map[pad:-pad, pad:-pad]
    return float(ssim_map.mean())


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 CIELAB (L 0..100) with OpenCV's float conversion."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB -> uint8 RGB, out-of-gamut colours clipped."""
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIE76 colour difference (delta E*ab) of two same-sized uint8 RGB frames."""
    _check_pair(a, b)
    return float(np.sqrt(((to_lab(a) - to_lab(b)) ** 2).sum(axis=2)).mean())


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise MediaError(f"cannot compare images of different sizes: {a.shape} and {b.shape}")
