"""Choosing where and in what precision the networks run.

`auto` picks CUDA when present; precision `auto` picks float16 on CUDA,
bfloat16 on CPUs with native bf16 matrix units (AMX or AVX512-BF16), and
float32 otherwise.
"""

import os
import platform

import torch

from vidcycle.errors import DeviceError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Raises DeviceError for a device this machine lacks."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} asked for, but CUDA is not available here; use device 'cpu' (--device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below its native bf16 instructions (AVX512-BF16, AMX).
_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def onednn_takes_bf16() -> bool:
    """Whether torch hands bf16 convolutions to oneDNN here: on any AVX-512 CPU (natively or by oneDNN's
    own emulation), honouring ONEDNN_MAX_CPU_ISA. Elsewhere torch runs its own im2col kernels, with ~13x
    the working memory (runtime/memory.py counts it)."""
    try:
        # The very test torch's convolution makes before it hands bf16 to oneDNN.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return _bf16_instructions_in_use()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 arithmetic (AVX512-BF16 or AMX on x86, not capped below them by
    ONEDNN_MAX_CPU_ISA; the bf16 extension on ARM, as torch checks it). torch's own check also says yes on
    plain AVX-512 (Skylake to Tiger Lake), where oneDNN emulates bf16: training ran 3.0x slower than in
    float32 there (benchmarks/README.md, "bf16 on AVX-512 without bf16")."""
    if not onednn_takes_bf16():
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    return _bf16_instructions_in_use()


def _bf16_instructions_in_use() -> bool:
    """The CPU has bf16 instructions and ONEDNN_MAX_CPU_ISA does not cap oneDNN below them."""
    return _isa_allows_native_bf16() and _has_bf16_instructions()


def _has_bf16_instructions() -> bool:
    """AVX512-BF16 or AMX, as torch's cpuinfo sees them on any OS; /proc/cpuinfo where torch lacks the query."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return _cpuinfo_flags() & _NATIVE_BF16_FLAGS != set()


def _isa_allows_native_bf16() -> bool:
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() not in _ISA_WITHOUT_BF16


def _cpuinfo_flags() -> set[str]:
    return set(_cpuinfo_field("flags").split())


def cpu_vendor() -> str:
    """The x86 vendor string ("GenuineIntel", "AuthenticAMD"): /proc/cpuinfo's vendor_id, or the end of
    platform.processor() on Windows; "" where neither says."""
    vendor = _cpuinfo_field("vendor_id")
    if vendor:
        return vendor
    named = platform.processor().rsplit(",", 1)[-1].strip()
    return named if named in ("GenuineIntel", "AuthenticAMD") else ""


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def pick_precision(spec: str | None, device: torch.device) -> torch.dtype:
    """Raises DeviceError for a precision the device cannot run."""
    if spec is None or spec == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if spec not in PRECISIONS:
        raise DeviceError(f"unknown precision {spec!r}; use auto, {', '.join(PRECISIONS)}")
    if spec == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU here; use bf16 or fp32")
    return PRECISIONS[spec]


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in PRECISIONS.items()}[dtype]


# Below this width, CPU bf16 trains slower than float32: casts, per-op overhead and slow small bf16
# kernels. Measured: benchmarks/README.md, "Training precision on the CPU".
NARROW_NGF = 32


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Compute capability 8.0 (Ampere) or newer. torch.cuda.is_bf16_supported() also says yes where bf16
    is only emulated (V100, T4, RTX 20xx: cuDNN has no bf16 convolutions there)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_training_precision(spec: str | None, device: torch.device, ngf: int | None = None) -> torch.dtype:
    """auto: on CUDA bf16 where native (no loss scaling to tune), else fp16 with a grad scaler; on CPU
    bf16 where the CPU has native bf16, except for generators narrower than NARROW_NGF filters, which
    train faster in float32 (benchmarks/README.md, "Training precision on the CPU"). Raises DeviceError."""
    if (spec or "auto") == "auto" and device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
    if (spec or "auto") == "auto" and ngf is not None and ngf < NARROW_NGF:
        return torch.float32
    return pick_precision(spec, device)
