"""Flags several commands share, defined once: every command offers the same device and precision choices,
and answers an input that does not exist the same way (exit 4, before any model loads)."""

import click

from vidcycle.files import require_existing

DEVICE_HELP = "Where the network runs: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N."
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TRANSLATE_PRECISION_HELP = "auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."


def device_option():
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)


def precision_option(help_text: str = TRANSLATE_PRECISION_HELP):
    return click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                        help=help_text)


def must_exist(ctx, param, value):
    """A click callback: each path given exists, else vidcycle's media error (exit 4) while the flags are
    read, before any work. (click's own check would be a usage error, exit 2.)"""
    for path in value if isinstance(value, tuple) else (value,):
        if path is not None:
            require_existing(path)
    return value
