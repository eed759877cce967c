"""What machine a benchmark ran on: the CPU model, the flags that decide its speed, and ISA overrides."""

import os

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """'MODEL; avx2:yes ... amx_tile:no; bf16: native' plus any ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA in
    force. 'bf16: emulated' is what torch runs here, flags or not: ONEDNN_MAX_CPU_ISA=AVX2 (with
    ATEN_CPU_CAPABILITY=avx2) makes this machine an AVX2-only CPU, to measure both kinds on one."""
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "?":
                    model = value.strip()
                if key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    shown = " ".join(f"{flag}:{'yes' if flag in flags else 'no'}" for flag in SPEED_FLAGS)
    isa = ", ".join(f"{key}={os.environ[key]}" for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                           "MKL_ENABLE_INSTRUCTIONS")
                    if key in os.environ)
    return f"{model}; {shown}; bf16: {bf16_kind()}" + (f" ({isa})" if isa else "")


def bf16_kind() -> str:
    """'native' where the CPU has bf16 arithmetic (AVX512-BF16 or AMX, within ONEDNN_MAX_CPU_ISA);
    'emulated by oneDNN' on plain AVX-512; else 'emulated' (torch's own im2col kernels: slower, and more
    memory)."""
    # Imported here: this module tells what machine ran a benchmark, torch or not.
    from vidcycle.runtime.device import cpu_has_fast_bf16, onednn_takes_bf16

    return "native" if cpu_has_fast_bf16() else "emulated by oneDNN" if onednn_takes_bf16() else "emulated"
