"""The three-stage stream that translates one clip: a decode thread (PyAV; with --temporal also the
blender's source-only flow), a network thread (batches through the translator, then the blend) and the
encoder in the calling thread, joined by bounded queues.

Memory stays constant whatever the clip's length, and PyAV's GIL-free decode and
encode hide behind the network. An error in any stage stops the others and is
raised in the caller.
"""

import queue
import threading

import numpy as np
import torch

from vidcycle.errors import MediaError
from vidcycle.media.video import CarriedItem, DecodedFrame
from vidcycle.runtime.translator import Translator

_END = object()  # end-of-stream marker between stages
_POLL_S = 0.1  # how often a blocked stage checks whether another one failed
QUEUED_BYTES = 256 * 2 ** 20


def stream_clip(reader, writer, translator, options, reporter, blender=None):
    """Decode, translate and encode every frame of `reader` into `writer`; carried audio and subtitles pass
    through in order. `options` is an ApplyOptions, `reporter` gets frames_done(n). `blender`: the
    TemporalBlender to continue (a later segment of a clip); by default a new one when options ask."""
    width, height = reader.info.width, reader.info.height
    batch_size = options.batch_size or translator.batch_size(width, height)
    # Frames waiting between stages: two batches decoded ahead and three translated, but no more than
    # QUEUED_BYTES of each for big frames, so that memory stays flat however large the clip.
    frame_bytes = width * height * 3
    ahead = max(2, min(2 * batch_size, QUEUED_BYTES // frame_bytes))
    behind = max(1, min(3, QUEUED_BYTES // (frame_bytes * batch_size)))
    stop = threading.Event()
    errors: list[BaseException] = []
    decoded: queue.Queue = queue.Queue(maxsize=ahead)
    translated: queue.Queue = queue.Queue(maxsize=behind)
    blender = blender if blender is not None else make_blender(options.temporal)
    shape = (reader.info.height, reader.info.width, 3)

    def decode_stage():
        for item in reader.items():
            if blender is not None and isinstance(item, DecodedFrame):
                # The blender's flow needs only the sources: computing it here overlaps it with the network.
                item = (item, blender.motion(item.rgb)[0])
            _put(decoded, item, stop)

    def network_stage():
        batch: list = []  # DecodedFrame, or (DecodedFrame, FrameMotion) with the blender on
        while True:
            item = _get(decoded, stop)
            if isinstance(item, CarriedItem):
                _put(translated, item, stop)
                continue
            if item is not _END:
                batch.append(item)
            if batch and (item is _END or len(batch) == batch_size):
                _put(translated, _translate_batch(batch, translator, blender, options.side_by_side, shape), stop)
                batch = []
            if item is _END:
                return

    workers: list[threading.Thread] = []
    try:
        _start(workers, decode_stage, decoded, stop, errors, "vidcycle-decode")
        _start(workers, network_stage, translated, stop, errors, "vidcycle-network")
        while (item := _get(translated, stop, errors)) is not _END:
            if isinstance(item, CarriedItem):
                writer.write_carried(item)
                continue
            frames, stamps = item
            for rgb, (pts, time_base) in zip(frames, stamps):
                writer.write_frame(rgb, pts, time_base)
            reporter.frames_done(len(stamps))
    finally:
        stop.set()
        _join(workers)
    if errors:
        raise errors[0]


def _join(workers: list[threading.Thread]):
    """Wait for every stage, even through another Ctrl-C: a decode thread still inside FFmpeg when the
    container closes, or when the interpreter exits, crashes the process (seen as SIGSEGV)."""
    interrupted = None
    for worker in workers:
        while worker.is_alive():
            try:
                worker.join()
            except KeyboardInterrupt as error:
                interrupted = error
    if interrupted is not None:
        raise interrupted


def _translate_batch(batch: list, translator: Translator, blender, side_by_side: bool, shape: tuple):
    motions = [motion for _, motion in batch] if blender is not None else None
    batch = [frame for frame, _ in batch] if blender is not None else batch
    for frame in batch:
        if frame.rgb.shape != shape:
            raise MediaError(f"frame size changes mid-clip ({shape[1]}x{shape[0]} -> "
                             f"{frame.rgb.shape[1]}x{frame.rgb.shape[0]}); split the clip first")
    sources = np.stack([frame.rgb for frame in batch])
    outputs = translator.translate_tensor(torch.from_numpy(sources)).numpy()
    if blender is not None:
        outputs = blender.blend(outputs, motions)
    if side_by_side:
        outputs = np.concatenate([sources, outputs], axis=2)
    return outputs, [(frame.pts, frame.time_base) for frame in batch]


def make_blender(strength: float):
    if not strength or strength <= 0:
        return None
    from vidcycle.apply.temporal import TemporalBlender  # lazy: only jobs that ask for it need it
    return TemporalBlender(strength)


class _Stopped(Exception):
    """Another stage failed or the caller stopped: leave quietly."""


def _start(workers: list, body, out_queue: queue.Queue, stop: threading.Event, errors: list, name: str):
    """Start a stage; it is listed before it starts, so an interrupt at any moment still joins it."""
    def run():
        try:
            body()
            _put(out_queue, _END, stop)
        except _Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)
            stop.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    workers.append(thread)
    thread.start()


def _put(target: queue.Queue, item, stop: threading.Event):
    while not stop.is_set():
        try:
            target.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue
    raise _Stopped


def _get(source: queue.Queue, stop: threading.Event, errors: list | None = None):
    while True:
        if errors:
            raise errors[0]
        if stop.is_set() and errors is None:
            raise _Stopped
        try:
            return source.get(timeout=_POLL_S)
        except queue.Empty:
            continue
