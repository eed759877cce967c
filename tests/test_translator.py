"""Translating frames: any size, batches equal singles, reduced precision close to float32."""

import numpy as np
import pytest
import torch

import vidcycle
from vidcycle.errors import DeviceError, MediaError
from vidcycle.metrics import psnr
from vidcycle.runtime.device import cpu_has_fast_bf16, pick_device, pick_precision

# bf16 keeps 8 mantissa bits (~0.4% relative error per operation); through a 6-block
# generator that stays within a couple of 8-bit levels. 38 dB is ~3 levels RMS: well under
# what a viewer sees and above a typical visually-lossless video encode (~40 dB leaves
# room for deeper nets: a 9-block ngf-64 random net measured 44.6 dB here).
BF16_MIN_PSNR_DB = 38.0
FP16_MIN_PSNR_DB = 40.0


def textured(height, width, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None]
    return np.clip(ramp + rng.integers(0, 56, (height, width, 3)), 0, 255).astype(np.uint8)


def test_translate_returns_the_input_size(tiny_model_file):
    model = vidcycle.load_model(tiny_model_file, device="cpu")
    out = model.translate(textured(31, 47))
    assert out.shape == (31, 47, 3) and out.dtype == np.uint8


def test_batch_equals_one_by_one(tiny_model_file):
    model = vidcycle.load_model(tiny_model_file, device="cpu", precision="fp32")
    frames = [textured(40, 36, seed) for seed in range(3)]
    batch = model.translate_batch(frames)
    for frame, out in zip(frames, batch):
        # conv kernels may pick another summation order per batch size: at most one 8-bit level apart
        diff = np.abs(model.translate(frame).astype(int) - out.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.05


def test_bad_frames_are_clear_errors(tiny_model_file):
    model = vidcycle.load_model(tiny_model_file, device="cpu")
    with pytest.raises(MediaError, match="uint8 RGB"):
        model.translate(np.zeros((8, 8), np.float32))
    with pytest.raises(MediaError, match="share a size"):
        model.translate_batch([textured(8, 8), textured(8, 12)])


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="CPU lacks native bf16")
def test_auto_precision_picks_bf16_on_this_cpu_and_stays_close_to_fp32(tmp_path):
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.models.nets import GeneratorSpec, build_generator
    torch.manual_seed(1)
    spec = GeneratorSpec(n_blocks=6, ngf=16)
    save_model(tmp_path / "m.safetensors", build_generator(spec), ModelInfo(spec))
    fast = vidcycle.load_model(tmp_path / "m.safetensors", device="cpu")
    exact = vidcycle.load_model(tmp_path / "m.safetensors", device="cpu", precision="fp32")
    assert fast.precision == "bf16"
    frame = textured(64, 64)
    reference = exact.translate(frame)
    assert reference.std() > 10  # the check means something only if the output varies
    assert psnr(fast.translate(frame), reference) >= BF16_MIN_PSNR_DB


@pytest.mark.cuda
def test_fp16_on_cuda_stays_close_to_fp32(tiny_model_file):
    fast = vidcycle.load_model(tiny_model_file, device="cuda")
    exact = vidcycle.load_model(tiny_model_file, device="cpu", precision="fp32")
    assert fast.precision == "fp16"
    frame = textured(64, 64)
    assert psnr(fast.translate(frame), exact.translate(frame)) >= FP16_MIN_PSNR_DB


def test_device_and_precision_choices():
    assert pick_device("cpu").type == "cpu"
    assert pick_precision("fp32", pick_device("cpu")) == torch.float32
    with pytest.raises(DeviceError):
        pick_precision("fp8", pick_device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pick_device("cuda")


CPUS = {  # bf16 instructions, what torch's oneDNN check says, and whether bf16 is the fast choice
    "Sapphire Rapids (AMX) or Zen 4 (AVX512-BF16)": (True, True, True),
    "Skylake to Tiger Lake (AVX-512, no bf16)": (False, True, False),
    "AVX2 only": (False, False, False),
}


@pytest.mark.parametrize("cpu", CPUS)
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_arithmetic(cpu, monkeypatch):
    """torch's check also says yes on plain AVX-512, where oneDNN emulates bf16 (3x slower training)."""
    from vidcycle.runtime import device
    instructions, onednn_says, native = CPUS[cpu]
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(device, "_has_bf16_instructions", lambda: instructions)
    monkeypatch.setattr(device, "onednn_takes_bf16", lambda: onednn_says)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert device.cpu_has_fast_bf16() is native
    assert pick_precision("auto", pick_device("cpu")) == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")  # oneDNN held below its bf16 instructions
    assert device.cpu_has_fast_bf16() is False


def test_bf16_instructions_are_read_from_proc_cpuinfo_where_torch_cannot_say(monkeypatch):
    from vidcycle.runtime import device
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    for flags, native in (({"avx2", "avx512f", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                          ({"avx2", "avx512f", "avx512bw"}, False)):
        monkeypatch.setattr(device, "_cpuinfo_flags", lambda: flags)
        assert device._has_bf16_instructions() is native


def test_auto_precision_trusts_torchs_check_off_x86(monkeypatch):
    from vidcycle.runtime import device
    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(device, "_has_bf16_instructions", lambda: False)  # x86's names for them
    for onednn_says in (True, False):
        monkeypatch.setattr(device, "onednn_takes_bf16", lambda: onednn_says)
        assert device.cpu_has_fast_bf16() is onednn_says


def test_cpu_vendor_from_proc_cpuinfo_or_windows_processor_name(monkeypatch):
    from vidcycle.runtime import device
    monkeypatch.setattr(device, "_cpuinfo_field", lambda name: "")
    monkeypatch.setattr(device.platform, "processor", lambda: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel")
    assert device.cpu_vendor() == "GenuineIntel"
    monkeypatch.setattr(device.platform, "processor", lambda: "arm")
    assert device.cpu_vendor() == ""
    monkeypatch.setattr(device, "_cpuinfo_field", lambda name: "AuthenticAMD" if name == "vendor_id" else "")
    assert device.cpu_vendor() == "AuthenticAMD"
