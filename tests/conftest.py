"""Shared fixtures: an isolated model store, tiny generators and tiny media made in the test."""

import errno
import fractions
import os
import socket

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The flags of a tiny CycleGAN run on the CPU that tests train with.
TINY = ["--recipe", "tiny", "--workers", "0", "--precision", "fp32"]


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda run on the real GPU; without one they are skipped (benchmarks/gpu_check.py runs them
    on a GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty $VIDCYCLE_HOME; nothing touches the user's cache or the internet."""
    home = tmp_path_factory.mktemp("vidcycle_home")
    monkeypatch.setenv("VIDCYCLE_HOME", str(home))
    monkeypatch.setenv("VIDCYCLE_PRETRAINED_URL", "http://127.0.0.1:9/unreachable")
    return home


@pytest.fixture
def tiny_model_file(tmp_path):
    """A saved 2-block, ngf-8 generator (random weights), as a self-describing model file."""
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.models.nets import GeneratorSpec, build_generator

    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=2, ngf=8)
    path = tmp_path / "tiny.safetensors"
    save_model(path, build_generator(spec), ModelInfo(spec=spec, from_domain="summer", to_domain="winter",
                                                      train_size=32, source="test"))
    return path


def run_cli(*args, input=None, env=None, catch_exceptions=None, **kwargs):
    """Run `vidcycle ARGS...` in-process through click's CliRunner, each argument str()-ed (paths, numbers).

    Exceptions are caught into the result unless catch_exceptions=False. Click 8.2+ has no mix_stderr:
    result.output is stdout and stderr interleaved, result.stdout and result.stderr each alone.
    """
    from click.testing import CliRunner

    from vidcycle.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env,
                              catch_exceptions=catch_exceptions, **kwargs)


def reference_state(n_blocks: int = 9, ngf: int = 64, stale_norm_keys: bool = False) -> dict:
    """A state dict with the reference ResnetGenerator's keys and shapes, built from the table in
    checkpoints.md (not from vidcycle's own network), filled with random tensors."""
    g = torch.Generator().manual_seed(n_blocks * 1000 + ngf)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    state = {"model.1.weight": rand(ngf, 3, 7, 7), "model.1.bias": rand(ngf),
             "model.4.weight": rand(2 * ngf, ngf, 3, 3), "model.4.bias": rand(2 * ngf),
             "model.7.weight": rand(4 * ngf, 2 * ngf, 3, 3), "model.7.bias": rand(4 * ngf)}
    for k in range(10, 10 + n_blocks):
        for conv in (1, 5):
            state[f"model.{k}.conv_block.{conv}.weight"] = rand(4 * ngf, 4 * ngf, 3, 3)
            state[f"model.{k}.conv_block.{conv}.bias"] = rand(4 * ngf)
        if stale_norm_keys:
            state[f"model.{k}.conv_block.2.running_mean"] = torch.zeros(4 * ngf)
            state[f"model.{k}.conv_block.2.running_var"] = torch.ones(4 * ngf)
    n = n_blocks
    state[f"model.{10 + n}.weight"] = rand(4 * ngf, 2 * ngf, 3, 3)
    state[f"model.{10 + n}.bias"] = rand(2 * ngf)
    state[f"model.{13 + n}.weight"] = rand(2 * ngf, ngf, 3, 3)
    state[f"model.{13 + n}.bias"] = rand(ngf)
    state[f"model.{17 + n}.weight"] = rand(3, ngf, 7, 7)
    state[f"model.{17 + n}.bias"] = rand(3)
    if stale_norm_keys:
        state["model.2.running_mean"] = torch.zeros(ngf)
        state["model.2.num_batches_tracked"] = torch.tensor(0)
    return state


def write_noisy_images(folder, count, colour, seed=0, spread=30, size=(40, 36)):
    """`count` PNG photos of an RGB colour with uniform noise of +-spread levels, named img0.png..."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.integers(-spread, spread, (size[1], size[0], 3))
        rgb = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def write_clip(path, frames: int = 8, size=(64, 48), fps: int = 24, audio: bool = False,
               pts_list=None, codec: str = "libx264", seed: int = 0):
    """Write a short clip with moving coloured content (and optionally an AAC tone) using PyAV."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    time_base = fractions.Fraction(1, fps * 100 if pts_list is not None else fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base  # else pts are rebased to 1/fps and VFR gaps collapse
        audio_stream = container.add_stream("aac", rate=44100) if audio else None
        for i in range(frames):
            rgb = np.ascontiguousarray(np.roll(base, 2 * i, axis=1)[:, :width])
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = pts_list[i] if pts_list is not None else i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            write_tone(container, audio_stream, seconds=frames / fps)
    return path


def write_tone(container, stream, seconds: float):
    """A 440 Hz mono tone of `seconds` into an open AAC/FLAC stream, flushed."""
    import av

    rate, samples_per_frame = 44100, 1024
    total = int(rate * seconds)
    t = np.arange(total) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, total, samples_per_frame):
        chunk = tone[start:start + samples_per_frame]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def kill_once_logged(process, log, lines: int, seconds: float = 240) -> None:
    """SIGKILL `process` once its loss log `log` has `lines` lines; fails if it ended before that."""
    import signal
    import time
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= lines:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def one_thread():
    """One thread: faster for tiny nets and immune to other processes on a shared 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def landscapes(count, height, width, seed=0) -> np.ndarray:
    """`count` smooth random colour fields with a little noise (N x H x W x 3 uint8): outputs that vary, as
    real frames make them."""
    import cv2
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        frames.append(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_rank(rank: int, port: int | None = None, world: int = 2, **env) -> None:
    """Make this (spawned) process rank `rank` of `world` on this machine, as torchrun would, with `env`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), **({"MASTER_PORT": str(port)} if port else {}), **env)


def write_to_a_full_disk(dst, data, durable=False):
    """vidcycle.files.write_atomic on a disk that fills half-way: the temporary's write fails with ENOSPC, as
    the OS raises it (no file named)."""
    from vidcycle.files import atomic_path
    with atomic_path(dst, durable) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def clip_facts(path):
    """Every video frame's pts and pixels, every audio packet's pts and bytes: what two equal clips share."""
    import av

    with av.open(str(path)) as container:
        frames = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = [(packet.pts, bytes(packet)) for packet in container.demux(audio=0) if packet.size]
    return [pts for pts, _ in frames], np.stack([rgb for _, rgb in frames]), audio
