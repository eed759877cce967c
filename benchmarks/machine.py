"""What machine a benchmark ran on: the CPU model, the flags that decide its speed, and ISA overrides."""

import os

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """'MODEL; avx2:yes ... amx_tile:no' plus any ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA in force."""
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
    isa = ", ".join(f"{key}={os.environ[key]}" for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                    if key in os.environ)
    return f"{model}; {shown}" + (f" ({isa})" if isa else "")
