"""Temporal consistency: optical flow on source frames, the occlusion mask, the
warping-error metric of Lai et al. (ECCV 2018) and flow-guided blending of
translated frames at apply time (TemporalBlender).

Everything is measured on the SOURCE frames: the translation may flicker, the
source is what moved. Flow is OpenCV's DIS at a capped resolution (a few ms a
pair on CPU); for blending at full size it is scaled back up.

Flow convention: `flow(a, b)` is the displacement w with a(x) ~ b(x + w(x)),
so `warp(b, w)` samples b at x + w(x) and lands it on a's pixel grid.
"""

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction

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


# --------------------------------------------------------------------------- the metric

def _squared_difference(frame_t: np.ndarray, frame_next: np.ndarray, flow_fw: np.ndarray) -> np.ndarray:
    """Per pixel, the mean over channels of (frame_t - warp(frame_next))^2, in [0, 1] units."""
    diff = (frame_t.astype(np.float32) - warp(frame_next, flow_fw).astype(np.float32)) * np.float32(1 / 255)
    return (diff * diff).mean(axis=-1)


def _masked_mean(values: np.ndarray, visible: np.ndarray) -> float:
    kept = int(visible.sum())
    return float(values[visible].sum() / kept) if kept else 0.0


@dataclass
class WarpingError:
    """The warping error of a translation and of its source (the floor), on the pairs both have."""

    translated: float
    source: float
    mask_kept: float  # mean fraction of pixels the occlusion mask kept
    pairs: int
    analysis_width: int
    analysis_height: int
    flow_preset: str
    pair_translated: list[float] = field(default_factory=list, repr=False)
    pair_source: list[float] = field(default_factory=list, repr=False)
    # Where it flickers: per pixel (analysis size), the mean excess over the pairs that kept it,
    # and the first source frame to show it on.
    excess_map: np.ndarray | None = field(default=None, repr=False)
    first_frame: np.ndarray | None = field(default=None, repr=False)

    @property
    def excess(self) -> float:
        return self.translated - self.source

    @property
    def pair_excess(self) -> list[float]:
        return [t - s for t, s in zip(self.pair_translated, self.pair_source)]

    def summary(self) -> dict:
        """The numbers, without the per-pair lists and maps (for JSON)."""
        return {"translated": self.translated, "source": self.source, "excess": self.excess,
                "mask_kept": self.mask_kept, "pairs": self.pairs, "analysis_width": self.analysis_width,
                "analysis_height": self.analysis_height, "flow_preset": self.flow_preset}


def warping_error(sources: Iterable[np.ndarray], translations: Iterable[np.ndarray],
                  max_side: int = METRIC_MAX_SIDE, preset: str = METRIC_FLOW_PRESET,
                  progress=None) -> WarpingError:
    """Warping error of `translations` and of `sources` (the floor), flow and mask from the sources.

    Both are iterables of uint8 RGB frames in display order; only the common prefix is compared.
    The translation is resized to the source's analysis size. Streams: two frames in memory.
    `progress`, if given, has update(n) and hears of every source frame.
    """
    flow = FlowEstimator(preset)
    size = first = None
    previous = None  # (source gray, source rgb, translated rgb) at the analysis size
    pair_t, pair_s, kept = [], [], []
    excess_sum = kept_count = None
    for source, translated in zip(sources, translations):
        if size is None:
            size = analysis_size(source.shape[1], source.shape[0], max_side)
        source_small, translated_small = resize(source, size), resize(translated, size)
        current = (cv2.cvtColor(source_small, cv2.COLOR_RGB2GRAY), source_small, translated_small)
        if previous is None:
            first = source_small
            excess_sum = np.zeros(source_small.shape[:2], np.float64)
            kept_count = np.zeros(source_small.shape[:2], np.int64)
        else:
            flow_fw, flow_bw = flow(previous[0], current[0]), flow(current[0], previous[0])
            visible = visible_mask(flow_fw, flow_bw)
            squared_t = _squared_difference(previous[2], current[2], flow_fw)
            squared_s = _squared_difference(previous[1], current[1], flow_fw)
            pair_t.append(_masked_mean(squared_t, visible))
            pair_s.append(_masked_mean(squared_s, visible))
            kept.append(float(visible.mean()))
            excess_sum += np.where(visible, squared_t - squared_s, 0)
            kept_count += visible
        previous = current
        if progress is not None:
            progress.update(1)
    width, height = size if size is not None else (0, 0)
    if not pair_t:
        return WarpingError(0.0, 0.0, 0.0, 0, width, height, preset, first_frame=first)
    excess_map = (excess_sum / np.maximum(kept_count, 1)).astype(np.float32)
    return WarpingError(float(np.mean(pair_t)), float(np.mean(pair_s)), float(np.mean(kept)), len(pair_t),
                        width, height, preset, pair_t, pair_s, excess_map, first)


def flicker_picture(error: WarpingError, title: str = "") -> np.ndarray:
    """Where and when a translation flickers, as one uint8 RGB picture.

    Top: the first source frame, and beside it the per-pixel excess warping error (translation
    minus source, averaged over the pairs whose mask kept the pixel) as a heat map over that frame,
    scaled to its 99th percentile. Below: the per-pair error of the translation and of the source.
    """
    from .charts import FONT, INK, PAPER, loss_chart

    frame = error.first_frame if error.first_frame is not None else np.zeros((64, 64, 3), np.uint8)
    excess = np.zeros(frame.shape[:2], np.float32) if error.excess_map is None else np.maximum(error.excess_map, 0)
    top = float(np.percentile(excess, 99)) if excess.size else 0.0
    scaled = np.clip(excess / top, 0, 1) if top > 0 else np.zeros_like(excess)
    heat = cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    dim = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    overlay = (0.35 * dim + 0.65 * heat).astype(np.uint8)
    tiles = np.concatenate([frame, np.full((frame.shape[0], 8, 3), PAPER, np.uint8), overlay], axis=1)
    width = max(720, tiles.shape[1] + 24)
    scale = min(1.0, (width - 24) / tiles.shape[1])
    tiles = cv2.resize(tiles, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else tiles
    band = np.full((tiles.shape[0] + 44, width, 3), PAPER, np.uint8)
    band[32:32 + tiles.shape[0], 12:12 + tiles.shape[1]] = tiles
    cv2.putText(band, f"source frame | excess warping error per pixel (brightest: {top:.3g} and above)",
                (12, 22), FONT, 0.5, INK, 1, cv2.LINE_AA)
    pairs = list(range(error.pairs))
    chart = loss_chart(pairs, [("warping error per frame pair (mean squared, [0,1] RGB)",
                                {"translated": error.pair_translated, "source (floor)": error.pair_source})],
                       width=width, title=title, x_label="frame pair")
    return np.concatenate([chart, band], axis=0)


def write_flicker_picture(report: "FlickerReport", path, overwrite: bool = False) -> None:
    """Draw flicker_picture for a report into a PNG (atomically). Raises OutputExistsError."""
    from pathlib import Path

    from .charts import write_png
    from .errors import OutputExistsError

    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    title = f"{Path(report.translated).name}: excess {report.error.excess:.3g} (source floor {report.error.source:.3g})"
    write_png(path, flicker_picture(report.error, title))


# --------------------------------------------------------------------------- comparing two clips

@dataclass
class Check:
    """One structural fact of the source and the translation, and whether they agree."""

    name: str
    source: str
    translated: str
    same: bool


@dataclass
class FlickerReport:
    source: str
    translated: str
    error: WarpingError
    checks: list[Check]

    @property
    def structure_ok(self) -> bool:
        return all(check.same for check in self.checks)

    def to_dict(self) -> dict:
        return {"source": self.source, "translated": self.translated, "warping_error": self.error.summary(),
                "structure_ok": self.structure_ok, "checks": [asdict(check) for check in self.checks],
                "differ": [check.name for check in self.checks if not check.same]}


@dataclass
class _ClipFacts:
    """What the decoding pass learns about a clip, filled in while its frames stream by."""

    frames: int = 0
    size: tuple[int, int] | None = None
    sizes_vary: bool = False
    times: list = field(default_factory=list)  # Fraction seconds, or None per frame without pts
    tick: Fraction = Fraction(0)
    damaged_packets: int = 0


def measure_flicker(source, translated, max_side: int = METRIC_MAX_SIDE, preset: str = METRIC_FLOW_PRESET,
                    progress=None) -> FlickerReport:
    """Compare a translated clip with its source: warping error (with the source's as the floor)
    and the structural facts (frame count, timestamps, size, audio, subtitles, rotation, colour tags).

    `progress`, if given, has start(total or None) and update(n), counted in source frames.
    Raises MediaError when either file cannot be opened or has no decodable video.
    """
    from .video import DecodeStats, iter_frames, probe

    info = {"source": probe(source), "translated": probe(translated)}
    audio = {"source": audio_summary(source), "translated": audio_summary(translated)}
    subtitles = {"source": stream_summary(source, "subtitles"), "translated": stream_summary(translated, "subtitles")}
    if progress is not None:
        progress.start(info["source"].frames or None)

    facts = {"source": _ClipFacts(), "translated": _ClipFacts()}
    stats = {"source": DecodeStats(), "translated": DecodeStats()}
    frames = {name: _record(iter_frames(path, stats[name]), facts[name])
              for name, path in (("source", source), ("translated", translated))}
    error = warping_error(frames["source"], frames["translated"], max_side, preset, progress)
    # zip stops at the shorter clip: drain the longer one so its frames are counted too.
    for name in frames:
        for _ in frames[name]:
            pass
        facts[name].damaged_packets = stats[name].damaged_packets
    checks = _compare(facts["source"], facts["translated"], audio["source"], audio["translated"])
    if subtitles["source"] or subtitles["translated"]:
        checks.append(Check("subtitles", _streams_text(subtitles["source"]), _streams_text(subtitles["translated"]),
                            subtitles["source"] == subtitles["translated"]))
    checks += _display_checks(info["source"], info["translated"])
    return FlickerReport(str(source), str(translated), error, checks)


def _record(frames, facts: _ClipFacts) -> Iterator[np.ndarray]:
    for frame in frames:
        size = (frame.rgb.shape[1], frame.rgb.shape[0])
        if facts.size is None:
            facts.size = size
        facts.sizes_vary |= size != facts.size
        if frame.pts is None or frame.time_base is None:
            facts.times.append(None)
        else:
            facts.times.append(frame.pts * Fraction(frame.time_base))
            facts.tick = max(facts.tick, Fraction(frame.time_base))
        facts.frames += 1
        yield frame.rgb


def _compare(source: _ClipFacts, translated: _ClipFacts, audio_source: list, audio_translated: list) -> list[Check]:
    checks = [Check("frames", str(source.frames), str(translated.frames), source.frames == translated.frames)]
    checks.append(_compare_times(source, translated))
    checks.append(Check("size", _size_text(source), _size_text(translated),
                        source.size == translated.size and not source.sizes_vary and not translated.sizes_vary))
    checks.append(Check("audio", _streams_text(audio_source), _streams_text(audio_translated),
                        audio_source == audio_translated))
    if source.damaged_packets or translated.damaged_packets:
        checks.append(Check("damaged packets", str(source.damaged_packets), str(translated.damaged_packets),
                            translated.damaged_packets == source.damaged_packets))
    return checks


def _compare_times(source: _ClipFacts, translated: _ClipFacts) -> Check:
    # Timestamps are compared in seconds: a re-encode may change the time base, which rounds each
    # pts by up to one tick. Half a tick of the coarser clock separates rounding from a real shift.
    tolerance = max(source.tick, translated.tick, Fraction(1, 1_000_000)) / 2
    offsets = [abs(a - b) for a, b in zip(source.times, translated.times) if a is not None and b is not None]
    missing = sum((a is None) != (b is None) for a, b in zip(source.times, translated.times))
    shifted = sum(offset > tolerance for offset in offsets)
    same = shifted == 0 and missing == 0 and len(source.times) == len(translated.times)
    text_s, text_t = _times_text(source.times), _times_text(translated.times)
    if shifted:
        text_t += f", {shifted} shifted (max {float(max(offsets)) * 1000:.1f} ms)"
    if missing:
        text_t += f", {missing} pts missing on one side"
    return Check("timestamps", text_s, text_t, same)


def _times_text(times: list) -> str:
    known = [t for t in times if t is not None]
    if not known:
        return "no pts"
    return f"{float(min(known)):.3f}-{float(max(known)):.3f} s"


def _size_text(facts: _ClipFacts) -> str:
    if facts.size is None:
        return "-"
    return f"{facts.size[0]}x{facts.size[1]}" + (" (varies)" if facts.sizes_vary else "")


def _streams_text(streams: list) -> str:
    if not streams:
        return "none"
    return ", ".join(f"{codec} {packets} packets" for codec, packets in streams)


def _display_checks(source, translated) -> list[Check]:
    """Rotation and colour matrix/range: a player shows the clip turned or tinted when these differ."""
    def colour(info) -> str:
        names = {"ITU601": "BT.601", "ITU709": "BT.709", "SMPTE240M": "SMPTE 240M", "BT2020": "BT.2020"}
        return f"{names.get(info.matrix, info.matrix)} {'full' if info.full_range else 'limited'} range"

    return [Check("rotation", f"{source.rotation} deg", f"{translated.rotation} deg",
                  source.rotation == translated.rotation),
            Check("colour", colour(source), colour(translated), colour(source) == colour(translated))]


def audio_summary(path) -> list[tuple[str, int]]:
    """(codec, number of non-empty packets) for each audio stream of a media file.

    Raises MediaError when the file cannot be opened.
    """
    return stream_summary(path, "audio")


def stream_summary(path, kind: str) -> list[tuple[str, int]]:
    """(codec, number of packets with content) for each stream of `kind` ("audio", "subtitles").

    Raises MediaError when the file cannot be opened.
    """
    import av

    from .video import is_empty_mov_text, open_container

    container = open_container(path)
    try:
        streams = list(getattr(container.streams, kind))
        if not streams:
            return []
        counts = {stream.index: 0 for stream in streams}
        try:
            for packet in container.demux(streams):
                if packet.size and not is_empty_mov_text(packet):
                    counts[packet.stream.index] += 1
        except av.error.FFmpegError as error:
            raise MediaError(f"{path}: {kind} cannot be read ({error})") from error
        return [(stream.codec_context.name, counts[stream.index]) for stream in streams]
    finally:
        container.close()


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
