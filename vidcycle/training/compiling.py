"""Compiled training networks (`--compile`): torch.compile's inductor writes fused C++ for the CPU and
Triton for CUDA. Off by default: on a 2-core CPU the compile took minutes and the compiled step ran
slower than eager (benchmarks/README.md, "Compiled training step"). A missing or failing compiler
never stops a run: it trains eagerly after one logged line.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import fields, replace

import torch

from vidcycle.errors import first_line

log = logging.getLogger("vidcycle")

MIN_BUDGET = 30 * 60  # under --time, a compile of minutes is repaid only by a long run, if ever


def cpu_compiler() -> str | None:
    """The C++ compiler inductor would call for the CPU ($CXX, else g++ or clang++), or None."""
    wanted = os.environ.get("CXX")
    candidates = [wanted] if wanted else ["g++", "c++", "clang++"]
    return next((found for name in candidates if (found := shutil.which(name))), None)


def compiled_nets(nets, names: tuple, example: torch.Tensor, amp, time_budget: float | None = None):
    """`nets` (a dataclass of networks) with the fields in `names` torch.compile'd and compiled now, by one
    forward and backward on `example`, so a failure shows before the first step; or `nets` unchanged,
    with one logged line, where the compiler is missing or fails, or a time budget is too short to
    repay a compile."""
    if time_budget is not None and time_budget < MIN_BUDGET:
        log.info("--compile skipped: a compile takes minutes, which a --time budget under %d min does not "
                 "repay", MIN_BUDGET // 60)
        return nets
    if example.device.type == "cpu" and cpu_compiler() is None:
        log.warning("--compile: no C++ compiler found (g++, clang++ or $CXX): training without compiling")
        return nets
    try:
        compiled = replace(nets, **{name: torch.compile(getattr(nets, name)) for name in names})
        for name in names:
            with amp.autocast():
                out = getattr(compiled, name)(example)
            out.float().mean().backward()
    except Exception as error:  # noqa: BLE001 - the compiler's failures (C++, Triton, dynamo) share no type
        log.warning("--compile failed (%s: %s): training without compiling", type(error).__name__,
                    first_line(error))
        torch._dynamo.reset()
        return nets
    finally:
        for field in fields(nets):
            for parameter in getattr(nets, field.name).parameters():
                parameter.grad = None  # the trial's gradients must not reach the first step
    return compiled
