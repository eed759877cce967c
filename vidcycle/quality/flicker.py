"""Measuring flicker: the warping-error metric of Lai et al. (ECCV 2018) on a clip and its translation,
its picture, and the structural checks of `vidcycle eval-video` (frames, timestamps, size, audio,
subtitles, colour tags and rotation kept).

Flow and the occlusion mask are computed on the SOURCE frames (vidcycle.apply.temporal):
the translation may flicker, the source is what moved.
"""

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import cv2
import numpy as np

from vidcycle.errors import MediaError, OutputExistsError
from vidcycle.media.charts import FONT, INK, PAPER, loss_chart, write_png
from vidcycle.media.motion import (
    METRIC_FLOW_PRESET,
    METRIC_MAX_SIDE,
    FlowEstimator,
    analysis_size,
    resize,
    visible_mask,
    warp,
)
from vidcycle.media.video import (
    DecodeStats,
    is_empty_mov_text,
    iter_frames,
    open_container,
    probe,
)
from vidcycle.progress import Bar, bar

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
                  counter: Bar | None = None) -> WarpingError:
    """Warping error of `translations` and of `sources` (the floor), flow and mask from the sources.

    Both are iterables of uint8 RGB frames in display order; only the common prefix is compared.
    The translation is resized to the source's analysis size. Streams: two frames in memory.
    `counter` (a vidcycle.progress.Bar), if given, hears of every source frame.
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
        if counter is not None:
            counter.update(1)
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


    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass overwrite=True to replace it",
                                cli=f"{path}: exists; pass --overwrite to replace it")
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

    `progress` (a vidcycle.progress.Progress) counts source frames.
    Raises MediaError when either file cannot be opened or has no decodable video.
    """

    info = {"source": probe(source), "translated": probe(translated)}
    audio = {"source": audio_summary(source), "translated": audio_summary(translated)}
    subtitles = {"source": stream_summary(source, "subtitles"), "translated": stream_summary(translated, "subtitles")}

    facts = {"source": _ClipFacts(), "translated": _ClipFacts()}
    stats = {"source": DecodeStats(), "translated": DecodeStats()}
    frames = {name: _record(iter_frames(path, stats[name]), facts[name])
              for name, path in (("source", source), ("translated", translated))}
    with bar(progress, "eval-video", info["source"].frames or None, "frame") as counter:
        error = warping_error(frames["source"], frames["translated"], max_side, preset, counter)
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


