"""Temporal consistency: optical flow on source frames, the occlusion mask, and flow-guided blending
of translated frames at apply time (TemporalBlender). Measuring flicker is vidcycle.flicker.

Everything is measured on the SOURCE frames: the translation may flicker, the
source is what moved. Flow is OpenCV's DIS at a capped resolution (a few ms a
pair on CPU); for blending at full size it is scaled back up.

Flow convention: `flow(a, b)` is the displacement w with a(x) ~ b(x + w(x)),
so `warp(b, w)` samples b at x + w(x) and lands it on a's pixel grid.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import MediaError, UsageError

# Presets, measured at 320x240 on 2 busy cores: DIS MEDIUM ~10 ms a call, with
# 0.01-0.05 px mean error on a textured pan where FAST (~1.5-2.5 ms) and
# ULTRAFAST (~0.7 ms) had 0.05-0.13 px. Both the metric and the blender take
# MEDIUM. For the blender it is what lets the mask drop its safety margin: with
# FAST flow the blend needed an eroded mask to leave no ghost trail behind a
# moving object (tests/test_temporal.py), and that margin, a ring around every
# moving thing, is where a moving object's flicker was left untouched. With
# MEDIUM and a soft photometric confidence instead of the erosion, the
# benchmark's moving-object clip went from 45% to 52% of its flicker removed
# (demo model, strength 0.5, before encoding) and the test's ghost from 12 to
# 13 levels (95th percentile, strength 0.8), for ~20 ms more per frame, which
# the decode thread absorbs.
FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
METRIC_MAX_SIDE = 360
METRIC_FLOW_PRESET = "medium"
BLEND_MAX_SIDE = 320
BLEND_FLOW_PRESET = "medium"
# Chosen with benchmarks/flicker.py (320x240 generated clips, through apply and H.264),
# removed share of the excess warping error / PSNR against the per-frame output:
#   strength                         0.5           0.6           0.7
#   stand-in look + noise, pan       80% 34.5 dB   88% 33.4 dB   92% 32.5 dB
#   demo model, pan                  78% 39.3 dB   86% 38.5 dB   91% 37.6 dB
#   demo model, moving object        48% 41.6 dB   57% 40.9 dB   61% 40.2 dB
# 0.5 left a moving object's flicker above half; 0.6 clears it with room, and the
# stand-in's output moved closer to its noise-free twin (34.6 dB vs 33.8 dB at
# 0.5), so the stronger blend is not trading truth for stillness there. For
# i.i.d. per-frame flicker the recursive blend keeps (1 - s)^2 / (1 + s) of it
# (10% at 0.6) and costs s^2 / (1 + s) of the per-frame excess in MSE against the
# per-frame output, so 30 dB holds while that excess is under ~0.0044; stronger
# flicker than that needs a lower strength to keep 30 dB.
DEFAULT_TEMPORAL_STRENGTH = 0.6
MAX_TEMPORAL_STRENGTH = 0.95
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


# --------------------------------------------------------------------------- blending at apply time

@dataclass
class FrameMotion:
    """What the blender learns from the source alone about one frame: how it moved from the last.

    Computed at the analysis size; `flow` is None for a frame with nothing to blend with (the first,
    a scene cut, a change of size), which then passes through unchanged.
    """

    size: tuple[int, int]  # full frame (width, height)
    flow: np.ndarray | None = None  # analysis size, from this frame to the previous one
    mask: np.ndarray | None = None  # analysis size, float32 visibility in [0, 1], feathered
    visible: float = 0.0  # fraction of pixels the mask kept


class TemporalBlender:
    """Flow-guided blending of translated frames against the previous blended output.

    For each frame t: flow between source frames t and t-1 (at a capped size, scaled up), the
    visibility mask (forward-backward consistency, motion boundaries, a photometric check on the
    source) times a confidence that fades with the source's own mismatch after warping, then
        out_t = (1 - s M) * translated_t + s M * warp(out_{t-1})
    so the blend follows the motion and stops at disocclusions and moving-object edges instead of
    ghosting. Recursive: each output carries an exponentially fading memory of the frames before.
    State (previous source and blended frame) persists across calls; a scene cut (too little of the
    frame visible in the last) or a change of size starts afresh.

    The work splits in two so a pipeline can overlap it with the network: `motion(sources)` needs
    only the source frames (most of the cost: two flows and the mask), `blend(outputs, motions)`
    the translations (a warp and a weighted sum). Each keeps its own state, so the two may run in
    different threads, each in frame order. `process(sources, outputs)` does both.
    """

    def __init__(self, strength: float, max_side: int = BLEND_MAX_SIDE, preset: str = BLEND_FLOW_PRESET,
                 photometric_threshold: float = 24.0, photometric_sigma: float = 16.0, min_visible: float = 0.25,
                 feather: float = 1.5):
        if not 0.0 <= strength <= MAX_TEMPORAL_STRENGTH:
            raise UsageError(f"temporal strength must be between 0 and {MAX_TEMPORAL_STRENGTH} "
                             f"(0 = off, {DEFAULT_TEMPORAL_STRENGTH} = default); got {strength}")
        self.strength = float(strength)
        self.max_side = max_side
        self.photometric_threshold = photometric_threshold
        self.photometric_sigma = photometric_sigma
        self.min_visible = min_visible
        self.feather = feather
        self.flow = FlowEstimator(preset)
        self.scene_cuts = 0  # how many times too little was visible to blend
        self.reset()

    def reset(self):
        """Forget the previous frame (the next one passes through unchanged)."""
        self._previous_gray = None
        self._previous_output = None

    def process(self, sources: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Source frames and their translations (uint8 N x H x W x 3, decode order) -> blended N x H x W x 3."""
        sources, outputs = np.asarray(sources), np.asarray(outputs)
        if sources.shape != outputs.shape or sources.ndim != 4 or outputs.dtype != np.uint8:
            raise MediaError(f"temporal blending needs source and translated frames of one uint8 N x H x W x 3 "
                             f"shape; got {sources.dtype} {sources.shape} and {outputs.dtype} {outputs.shape}")
        if self.strength == 0.0:
            return outputs
        return self.blend(outputs, self.motion(sources))

    def motion(self, sources: np.ndarray) -> list[FrameMotion]:
        """Motion of each source frame (uint8 N x H x W x 3, or one H x W x 3) from the one before it."""
        sources = np.asarray(sources)
        return [self._motion_one(source) for source in (sources[None] if sources.ndim == 3 else sources)]

    def blend(self, outputs: np.ndarray, motions: list[FrameMotion]) -> np.ndarray:
        """Translations (uint8 N x H x W x 3) of the frames `motions` describe -> blended frames."""
        outputs = np.asarray(outputs)
        if len(outputs) != len(motions):
            raise MediaError(f"temporal blending got {len(outputs)} translated frames for {len(motions)} sources")
        return np.stack([self._blend_one(output, motion) for output, motion in zip(outputs, motions)])

    def _motion_one(self, source: np.ndarray) -> FrameMotion:
        height, width = source.shape[:2]
        gray = to_gray(source, analysis_size(width, height, self.max_side))
        previous_gray, self._previous_gray = self._previous_gray, gray
        motion = FrameMotion((width, height))
        if previous_gray is None or previous_gray.shape != gray.shape or self.strength == 0.0:
            return motion
        flow_back, flow_fwd = self.flow(gray, previous_gray), self.flow(previous_gray, gray)
        visible = visible_mask(flow_back, flow_fwd)
        # Both flows can agree and still be wrong (a textureless object dragging its background along):
        # the source itself must match where it says it came from. Past the threshold the pixel is
        # not blended at all; below it, the blend fades with the mismatch.
        mismatch = cv2.absdiff(gray, warp(previous_gray, flow_back)).astype(np.float32)
        visible &= mismatch <= self.photometric_threshold
        motion.visible = float(visible.mean())
        if motion.visible < self.min_visible:
            self.scene_cuts += 1
            return motion
        confidence = np.exp(-np.square(mismatch * np.float32(1 / self.photometric_sigma)))
        motion.flow, motion.mask = flow_back, self._feathered(visible) * confidence
        return motion

    def _feathered(self, visible: np.ndarray) -> np.ndarray:
        """The visibility mask with soft edges inside the visible area (never leaking into occlusions)."""
        mask = visible.astype(np.float32)
        if self.feather > 0:
            mask = cv2.GaussianBlur(mask, (0, 0), self.feather) * visible
        return mask

    def _blend_one(self, output: np.ndarray, motion: FrameMotion) -> np.ndarray:
        size = motion.size
        if (output.shape[1], output.shape[0]) != size:
            raise MediaError(f"temporal blending: translated frame is {output.shape[1]}x{output.shape[0]}, "
                             f"its source {size[0]}x{size[1]}")
        previous, self._previous_output = self._previous_output, output
        if motion.flow is None or previous is None or previous.shape != output.shape:
            return output
        alpha = motion.mask
        if (alpha.shape[1], alpha.shape[0]) != size:
            alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)
        alpha = alpha * np.float32(self.strength)
        warped = warp(previous, _scale_flow(motion.flow, size))
        blended = cv2.blendLinear(output, warped, 1.0 - alpha, alpha)
        self._previous_output = blended
        return blended


def _scale_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = flow.shape[:2]
    if (width, height) == size:
        return flow
    scaled = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR)
    scaled[..., 0] *= size[0] / width
    scaled[..., 1] *= size[1] / height
    return scaled
