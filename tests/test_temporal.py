"""The warping-error metric, the occlusion mask and the apply-time TemporalBlender (on arrays made
here), and `--temporal` end to end through the apply pipeline and the CLI."""

import cv2
import numpy as np
import pytest
import torch

from vidcycle.apply.temporal import TemporalBlender
from vidcycle.errors import MediaError, VidcycleError
from vidcycle.media.motion import FlowEstimator, visible_mask, warp
from vidcycle.metrics import psnr
from vidcycle.quality.flicker import warping_error


def wide_texture(width=400, height=64, seed=0):
    """A smooth random texture, wider than the frames cut from it (something flow can track)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def pan(frames=10, step=3, width=96, height=64, seed=0):
    """Frames sliding `step` px per frame to the left over a wide texture: a known camera pan."""
    scene = wide_texture(width + step * frames, height, seed)
    return np.stack([scene[:, step * i:step * i + width] for i in range(frames)])


def stylise(frames):
    """A stable 'translation': a fixed colour mapping applied to every frame."""
    return np.ascontiguousarray(255 - frames[..., ::-1])


def brightness_flicker(frames, sigma=12.0, seed=1):
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, sigma, len(frames))[:, None, None, None]
    return np.clip(frames.astype(np.float32) + offsets, 0, 255).astype(np.uint8)


def moving_square(frames=10, size=(160, 120), side=24, step=4):
    """A yellow square moving right over a static textured background, and its per-frame masks.

    The background needs texture finer than the square, or DIS spreads the square's motion over it.
    """
    width, height = size
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (height // 2, width // 2, 3), dtype=np.uint8)
    background = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    clip, masks = [], []
    for i in range(frames):
        frame = background.copy()
        x, y = 8 + step * i, height // 2 - side // 2
        frame[y:y + side, x:x + side] = (250, 240, 30)
        mask = np.zeros((height, width), bool)
        mask[y:y + side, x:x + side] = True
        clip.append(frame)
        masks.append(mask)
    return np.stack(clip), np.stack(masks)


# ---------------------------------------------------------------------------- the metric

def test_a_clip_compared_with_itself_scores_the_floor():
    frames = pan()
    result = warping_error(frames, frames)
    assert result.pairs == len(frames) - 1
    assert result.translated == result.source
    assert result.excess == 0.0


def test_a_clip_of_identical_frames_scores_the_floor_of_zero():
    frames = np.repeat(wide_texture(96, 64)[None], 6, axis=0)
    result = warping_error(frames, stylise(frames))
    assert result.source == pytest.approx(0.0, abs=1e-9)
    assert result.translated == pytest.approx(result.source, abs=1e-9)
    assert result.mask_kept > 0.99


def test_per_frame_brightness_noise_scores_clearly_higher():
    frames = pan()
    stable = warping_error(frames, stylise(frames))
    flicker = warping_error(frames, brightness_flicker(stylise(frames)))
    assert flicker.translated > 10 * stable.translated
    assert flicker.excess > 1e-3  # sigma 12/255 per frame: about 2 sigma^2 between frames


def test_a_known_pan_gives_near_zero_error_after_warping():
    frames = pan(step=3)
    result = warping_error(frames, stylise(frames))
    assert result.translated < 2e-4
    assert result.mask_kept > 0.85  # all but the column that slides out of view
    # Without the flow the same pairs differ a lot: the warping is doing the work.
    unwarped = np.mean([np.mean(((frames[i].astype(float) - frames[i + 1]) / 255) ** 2)
                        for i in range(len(frames) - 1)])
    assert unwarped > 50 * result.translated


def test_the_excess_map_shows_where_it_flickers():
    frames = pan(frames=8)
    translated = stylise(frames)
    noisy = brightness_flicker(translated)
    translated[:, :32] = noisy[:, :32]  # only the top half flickers
    result = warping_error(frames, translated)
    assert result.excess_map.shape == (64, 96) and result.first_frame.shape == (64, 96, 3)
    assert result.excess_map[4:28].mean() > 10 * abs(result.excess_map[36:60].mean())
    assert len(result.pair_translated) == len(result.pair_source) == result.pairs == 7


def test_the_flow_recovers_a_known_shift():
    frames = pan(step=3)
    flow = FlowEstimator("medium")
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[:2]]
    forward = flow(gray[0], gray[1])  # frame 0 at x is frame 1 at x - 3
    assert np.median(forward[8:-8, 8:-8, 0]) == pytest.approx(-3.0, abs=0.2)
    assert np.median(forward[8:-8, 8:-8, 1]) == pytest.approx(0.0, abs=0.2)
    assert np.abs(warp(frames[1], forward).astype(int) - frames[0])[8:-8, 8:-8].mean() < 3


def test_the_mask_drops_disoccluded_and_out_of_view_pixels():
    clip, masks = moving_square(frames=2, step=4)
    flow = FlowEstimator("medium")
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
    visible = visible_mask(flow(gray[1], gray[0]), flow(gray[0], gray[1]))
    # Frame 1's background where the square stood in frame 0 was hidden then: not visible.
    uncovered = masks[0] & ~masks[1]
    assert visible[uncovered].mean() < 0.2
    background = ~(masks[0] | masks[1])
    assert visible[background].mean() > 0.9
    # A pan: the column that enters the view has no past.
    frames = pan(step=3)
    g0, g1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[:2])
    entering = visible_mask(flow(g1, g0), flow(g0, g1))
    assert not entering[:, -2:].any()  # frame 1's right edge came from beyond frame 0's right edge
    assert entering[8:-8, 8:-8].all()


# ---------------------------------------------------------------------------- the blender

def test_blending_a_static_scene_reduces_per_frame_noise():
    rng = np.random.default_rng(0)
    scene = np.repeat(wide_texture(96, 64)[None], 12, axis=0)
    noisy = np.clip(scene + rng.normal(0, 10, scene.shape), 0, 255).astype(np.uint8)
    blended = TemporalBlender(0.5).process(scene, noisy)
    assert blended.shape == noisy.shape and blended.dtype == np.uint8
    noise_in = np.std(noisy[4:].astype(float) - scene[4:])
    noise_out = np.std(blended[4:].astype(float) - scene[4:])
    assert noise_out < 0.75 * noise_in
    assert np.array_equal(blended[0], noisy[0])  # nothing to blend with yet


def test_blending_halves_the_excess_warping_error_of_a_flickering_pan():
    frames = pan(frames=16)
    per_frame = brightness_flicker(stylise(frames))
    blended = TemporalBlender(0.5).process(frames, per_frame)
    before, after = warping_error(frames, per_frame), warping_error(frames, blended)
    assert after.excess < 0.5 * before.excess
    assert psnr(blended, per_frame) > 28


def test_a_moving_object_leaves_no_ghost_trail():
    clip, masks = moving_square(frames=10, step=4)
    per_frame = stylise(clip)
    blended = TemporalBlender(0.8).process(clip, per_frame)
    for t in range(1, len(clip)):
        left_behind = masks[:t].any(axis=0) & ~masks[t]
        ghost = np.abs(blended[t].astype(int) - per_frame[t])[left_behind].max(axis=-1)
        # The square's colour is ~200 levels from the background; a ghost would show as such.
        assert np.percentile(ghost, 95) < 30, t
    # The object itself is followed, not smeared: it keeps its colour in every frame.
    for t in range(len(clip)):
        inside = cv2.erode(masks[t].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert np.abs(blended[t].astype(int) - per_frame[t])[inside].max() < 30


def test_state_carries_across_calls():
    frames = pan(frames=12)
    per_frame = brightness_flicker(stylise(frames))
    whole = TemporalBlender(0.6).process(frames, per_frame)
    split = TemporalBlender(0.6)
    parts = [split.process(frames[a:b], per_frame[a:b]) for a, b in ((0, 5), (5, 6), (6, 12))]
    assert np.array_equal(np.concatenate(parts), whole)


def test_motion_and_blend_can_run_apart_in_two_threads():
    import queue
    import threading

    frames = pan(frames=12)
    per_frame = brightness_flicker(stylise(frames))
    whole = TemporalBlender(0.5).process(frames, per_frame)
    split = TemporalBlender(0.5)
    motions: queue.Queue = queue.Queue()
    producer = threading.Thread(target=lambda: [motions.put(split.motion(frame)[0]) for frame in frames])
    producer.start()
    blended = [split.blend(per_frame[i:i + 1], [motions.get()])[0] for i in range(len(frames))]
    producer.join()
    assert np.array_equal(np.stack(blended), whole)


def test_a_scene_cut_starts_afresh():
    first, second = pan(frames=5, seed=0), pan(frames=5, seed=7)[:, ::-1]
    frames = np.concatenate([first, second])
    per_frame = brightness_flicker(stylise(frames))
    blender = TemporalBlender(0.9)
    blended = blender.process(frames, per_frame)
    assert blender.scene_cuts == 1
    assert np.array_equal(blended[5], per_frame[5])


def test_full_size_frames_blend_with_flow_from_a_smaller_copy():
    frames = pan(frames=10, step=6, width=192, height=128)
    per_frame = brightness_flicker(stylise(frames))
    blended = TemporalBlender(0.5, max_side=96).process(frames, per_frame)
    assert warping_error(frames, blended).excess < 0.5 * warping_error(frames, per_frame).excess
    assert psnr(blended, per_frame) > 28


def test_frames_smaller_than_the_flow_needs_still_work():
    frames = np.repeat(wide_texture(8, 6)[None], 4, axis=0)
    per_frame = brightness_flicker(frames)
    result = warping_error(frames, frames)
    assert result.pairs == 3 and result.translated == result.source
    assert TemporalBlender(0.5).process(frames, per_frame).shape == frames.shape


def test_strength_zero_is_a_no_op_and_bad_strengths_are_refused():
    frames = pan(frames=4)
    per_frame = brightness_flicker(frames)
    assert np.array_equal(TemporalBlender(0.0).process(frames, per_frame), per_frame)
    for bad in (-0.1, 1.0, 3):
        with pytest.raises(VidcycleError, match="strength"):
            TemporalBlender(bad)
    with pytest.raises(MediaError, match="N x H x W x 3"):
        TemporalBlender(0.5).process(frames, per_frame[:, :32])


# ---------------------------------------------------------------------------- end to end through apply

class FlickeringLook(torch.nn.Module):
    """A stand-in generator: a fixed colour mapping plus a brightness offset redrawn for every frame."""

    def __init__(self, sigma=12.0):
        super().__init__()
        self.sigma = sigma / 127.5
        self.rng = np.random.default_rng(5)

    def forward(self, batch):
        offsets = torch.from_numpy(self.rng.normal(0, self.sigma, (batch.shape[0], 1, 1, 1))).to(batch.dtype)
        return (-batch.flip(1) + offsets).clamp(-1, 1)


def flickering_translator():
    from vidcycle.models.modelfile import ModelInfo
    from vidcycle.models.nets import GeneratorSpec
    from vidcycle.runtime.translator import Translator
    return Translator(FlickeringLook(), ModelInfo(spec=GeneratorSpec(2, 8)), device="cpu", precision="fp32",
                      name="flicker")


def write_pan_clip(path, frames=16, audio=True):
    from test_eval_video import write_frames
    return write_frames(path, pan(frames=frames, step=3, width=128, height=96), audio=audio)


def test_apply_temporal_halves_the_flicker_and_keeps_frames_timestamps_and_audio(tmp_path):
    from vidcycle.apply.jobs import ApplyOptions, translate_video
    from vidcycle.quality.flicker import measure_flicker
    from vidcycle.apply.limits import RECOMMENDED_TEMPORAL_STRENGTH

    src = write_pan_clip(tmp_path / "pan.mp4")
    plain, smooth = tmp_path / "plain.mp4", tmp_path / "smooth.mp4"
    translate_video(src, plain, flickering_translator(), ApplyOptions(batch_size=3))
    translate_video(src, smooth, flickering_translator(),
                    ApplyOptions(batch_size=3, temporal=RECOMMENDED_TEMPORAL_STRENGTH))
    before, after = measure_flicker(src, plain), measure_flicker(src, smooth)
    assert before.error.excess > 1e-3  # the stand-in really flickers
    assert after.error.excess < 0.5 * before.error.excess
    assert after.structure_ok, after.to_dict()["differ"]  # frame count, timestamps, size, audio
    assert [c.translated for c in after.checks if c.name == "audio"] != ["none"]


def test_the_apply_command_takes_temporal(tmp_path, monkeypatch, tiny_model_file):
    import vidcycle.apply.jobs
    from conftest import run_cli
    from vidcycle.quality.flicker import measure_flicker
    from vidcycle.apply.limits import RECOMMENDED_TEMPORAL_STRENGTH

    monkeypatch.setattr(vidcycle.apply.jobs, "load_model", lambda *args, **kwargs: flickering_translator())
    src = write_pan_clip(tmp_path / "pan.mp4", frames=12)
    strengths = []
    original_init = TemporalBlender.__init__

    def spy(self, strength, *args, **kwargs):
        strengths.append(strength)
        original_init(self, strength, *args, **kwargs)
    monkeypatch.setattr(TemporalBlender, "__init__", spy)
    outputs = {}
    for label, flag in (("off", ["--temporal", "0"]), ("0.8", ["--temporal", "0.8"]), ("bare", ["--temporal"])):
        outputs[label] = tmp_path / f"out_{label}.mp4"
        result = run_cli("apply", str(src), "-m", str(tiny_model_file), "-o", str(outputs[label]), *flag)
        assert result.exit_code == 0, result.output
    assert strengths[-2:] == [0.8, RECOMMENDED_TEMPORAL_STRENGTH]  # bare --temporal: the recommended strength
    before = measure_flicker(src, outputs["off"])
    for label in ("0.8", "bare"):
        after = measure_flicker(src, outputs[label])
        assert after.error.excess < 0.5 * before.error.excess
        assert after.structure_ok


def test_the_apply_command_refuses_a_strength_that_would_freeze_the_picture(tmp_path, tiny_model_file):
    from conftest import run_cli

    src = write_pan_clip(tmp_path / "pan.mp4", frames=4, audio=False)
    result = run_cli("apply", str(src), "-m", str(tiny_model_file), "--temporal", "1",
                     "-o", str(tmp_path / "out.mp4"))
    assert result.exit_code == 2  # a usage mistake
    assert "Invalid value for '--temporal'" in result.output and "0<=x<=0.95" in result.output
    assert not (tmp_path / "out.mp4").exists()
