"""Flow-guided blending of translated frames at apply time (TemporalBlender): each output is blended
with the previous one, moved along the source's motion (vidcycle.media.motion), where the source shows
the same content in both frames. Measuring flicker is vidcycle.quality.flicker.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from vidcycle.apply.limits import MAX_TEMPORAL_STRENGTH, RECOMMENDED_TEMPORAL_STRENGTH
from vidcycle.errors import MediaError, UsageError
from vidcycle.media.motion import FlowEstimator, analysis_size, to_gray, visible_mask, warp

BLEND_MAX_SIDE = 320
BLEND_FLOW_PRESET = "medium"


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
                             f"(0 = off, {RECOMMENDED_TEMPORAL_STRENGTH} = recommended); got {strength}")
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

    def state(self) -> dict:
        """What the next frame is blended with (arrays), to carry a clip across segments."""
        return {name: value for name, value in (("previous_gray", self._previous_gray),
                                                ("previous_output", self._previous_output)) if value is not None}

    def restore(self, state: dict) -> None:
        """Continue after the frame whose `state()` this is."""
        self._previous_gray = state.get("previous_gray")
        self._previous_output = state.get("previous_output")

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
