"""The README's first command (minus the install) converts the sample clip with the built-in demo model."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Exactly as in the README, after `python3 -m venv .venv && . .venv/bin/activate && pip install -e . && `.
FRONT_DOOR = "vidcycle apply samples/summer_clip.mp4 --model demo-summer2winter -o summer_clip_winter.mp4"

def _probe(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [f for f in container.decode(video=0)]
        rgb = [f.to_ndarray(format="rgb24") for f in frames[:: max(1, len(frames) // 6)]]
        last_end = float((frames[-1].pts - frames[0].pts) * frames[-1].time_base)
        container.seek(0)
        audio = container.streams.audio[0]
        samples = sum(f.samples for f in container.decode(audio=0))
        return {"frames": len(frames), "span": last_end, "size": (video.width, video.height),
                "audio_codec": audio.codec_context.name, "audio_rate": audio.rate, "audio_samples": samples,
                "rgb": rgb}


def test_readme_front_door_converts_the_sample_clip_to_winter(tmp_path):
    (tmp_path / "samples").mkdir()
    shutil.copy(ROOT / "samples" / "summer_clip.mp4", tmp_path / "samples")
    vidcycle = Path(sys.executable).with_name("vidcycle")
    command = shlex.split(FRONT_DOOR)
    command[0] = str(vidcycle) if vidcycle.exists() else command[0]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "VIDCYCLE_HOME": str(tmp_path / "empty_home")})
    assert result.returncode == 0, result.stderr
    output = tmp_path / "summer_clip_winter.mp4"
    assert result.stdout.strip().endswith("summer_clip_winter.mp4")
    source, converted = _probe(tmp_path / "samples" / "summer_clip.mp4"), _probe(output)
    assert converted["frames"] == source["frames"]
    assert converted["span"] == pytest.approx(source["span"], abs=1e-3)
    assert converted["size"] == source["size"]
    for key in ("audio_codec", "audio_rate", "audio_samples"):
        assert converted[key] == source[key], key
    # And it is winter: brighter, greyer ground and sky than the summer input.
    before, after = np.stack(source["rgb"]).astype(np.float32), np.stack(converted["rgb"]).astype(np.float32)
    saturation = lambda frames: np.mean([cv2.cvtColor(f.astype(np.uint8), cv2.COLOR_RGB2HSV)[..., 1].mean()
                                         for f in frames])
    assert after[:, 90:].mean() > before[:, 90:].mean() + 40  # the lower half: meadow -> snow
    assert saturation(after) < saturation(before) - 30
