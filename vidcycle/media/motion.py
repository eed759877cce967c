"""Motion between source frames: optical flow, warping and the occlusion mask, used by the blender at
apply time (vidcycle.apply.temporal) and by the flicker metric (vidcycle.quality.flicker).

Everything is measured on the SOURCE frames: the translation may flicker, the
source is what moved. Flow is OpenCV's DIS at a capped resolution (a few ms a
pair on CPU); for blending at full size it is scaled back up.

Flow convention: `flow(a, b)` is the displacement w with a(x) ~ b(x + w(x)),
so `warp(b, w)` samples b at x + w(x) and lands it on a's pixel grid.
"""


import cv2
import numpy as np

from vidcycle.errors import MediaError, UsageError

# DIS presets. The metric and the blender take MEDIUM: several times slower than FAST but several times
# more accurate, which lets the blender's mask drop the eroded safety margin (a ring around every moving
# thing where its flicker was left untouched); the decode thread absorbs the extra time.
# Measured: benchmarks/README.md, "Optical flow preset".
FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
METRIC_MAX_SIDE = 360
METRIC_FLOW_PRESET = "medium"
MIN_ANALYSIS_SIDE = 16


# --------------------------------------------------------------------------- flow and masks

def analysis_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most max_side, but scaled up where
    needed so the shorter side is at least MIN_ANALYSIS_SIDE (DIS needs 12 px and a pyramid)."""
    scale = min(1.0, max_side / max(width, height))
    scale = max(scale, MIN_ANALYSIS_SIDE / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_gray(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB frame -> uint8 grayscale at `size` (width, height), area-averaged."""
    return cv2.cvtColor(resize(frame, size), cv2.COLOR_RGB2GRAY)


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


class FlowEstimator:
    """DIS optical flow between grayscale frames; one instance per thread (it keeps buffers)."""

    def __init__(self, preset: str = METRIC_FLOW_PRESET):
        if preset not in FLOW_PRESETS:
            raise UsageError(f"unknown flow preset {preset!r}; use one of {', '.join(FLOW_PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(FLOW_PRESETS[preset])

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """HxWx2 float32 flow w with a(x) ~ b(x + w(x)). Raises MediaError for frames DIS cannot take."""
        try:
            return self._dis.calc(a, b, None)
        except cv2.error as error:  # an extreme aspect ratio leaves a pyramid level empty
            raise MediaError(f"optical flow cannot run on {a.shape[1]}x{a.shape[0]} analysis frames "
                             f"(aspect ratio too extreme); measure or blend without it") from error


def warp(image: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Sample `image` at x + flow(x) (bilinear), giving it the pixel grid of the flow."""
    height, width = flow.shape[:2]
    grid_x, grid_y = _grid(height, width)
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=border)


def visible_mask(flow_ab: np.ndarray, flow_ba: np.ndarray) -> np.ndarray:
    """Bool HxW: pixels of frame a that are visible in frame b, by the tests of Ruder et al.
    (GCPR 2016) as used by Lai et al. for the warping error.

    Occluded where the forward and backward flows disagree,
      |w_ab + w_ba(x + w_ab)|^2 > 0.01 (|w_ab|^2 + |w_ba(x + w_ab)|^2) + 0.5,
    or on a motion boundary,
      |grad u|^2 + |grad v|^2 > 0.01 |w_ab|^2 + 0.002,
    or where x + w_ab leaves the frame (Lai's zero padding flags these implicitly).
    """
    height, width = flow_ab.shape[:2]
    back = warp(flow_ba, flow_ab)
    round_trip = _sq_norm(flow_ab + back)
    mag_ab, mag_back = _sq_norm(flow_ab), _sq_norm(back)
    inconsistent = round_trip > 0.01 * (mag_ab + mag_back) + 0.5

    # Forward differences, as in Lai et al.'s compute_flow_gradients.
    du_dx = np.diff(flow_ab[..., 0], axis=1, append=flow_ab[:, -1:, 0])
    dv_dx = np.diff(flow_ab[..., 1], axis=1, append=flow_ab[:, -1:, 1])
    du_dy = np.diff(flow_ab[..., 0], axis=0, append=flow_ab[-1:, :, 0])
    dv_dy = np.diff(flow_ab[..., 1], axis=0, append=flow_ab[-1:, :, 1])
    boundary = du_dx ** 2 + dv_dx ** 2 + du_dy ** 2 + dv_dy ** 2 > 0.01 * mag_ab + 0.002

    grid_x, grid_y = _grid(height, width)
    target_x, target_y = grid_x + flow_ab[..., 0], grid_y + flow_ab[..., 1]
    outside = (target_x < 0) | (target_x > width - 1) | (target_y < 0) | (target_y > height - 1)
    return ~(inconsistent | boundary | outside)


def _sq_norm(flow: np.ndarray) -> np.ndarray:
    return flow[..., 0] ** 2 + flow[..., 1] ** 2


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    # Shared by the blender's two threads: read once, never index after a check (another may clear).
    grid = _GRIDS.get((height, width))
    if grid is None:
        if len(_GRIDS) > 8:
            _GRIDS.clear()
        grid = tuple(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))
        _GRIDS[(height, width)] = grid
    return grid
