"""Larger Winograd tiles against vidcycle's F(4x4, 3x3): F(6x6, 3x3) and F(8x8, 3x3) (Lavin and Gray's
construction at other points), their float32 rounding and their speed, forward and backward.

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/winograd_tiles.py

A bigger tile takes fewer products per output pixel (2.25 for m = 4, 1.78 for 6, 1.56 for 8) but rounds
more, wastes more where the output side is not a multiple of m (a 32-pixel side in 6-pixel tiles is
computed as 36), and hands the batched product fewer rows per transform point. Each tile size is run
as vidcycle's is (one product with the two-sided transform) and separably (the row transform, then the
column one). Prints the relative error against a float64 convolution, then the median of --reps forward
and backward calls, all variants in turns, and each over torch's convolution.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from vidcycle.runtime.winograd import winograd_conv3x3  # noqa: E402

POINTS = {4: (0, 1, -1, 2, -2), 6: (0, 1, -1, 2, -2, 0.5, -0.5),
          8: (0, 1, -1, 2, -2, 0.5, -0.5, 1.5, -1.5)}  # for 8: the least rounding of four sets tried
CONVOLUTIONS = ((2, 256, 32), (1, 256, 32), (2, 128, 32), (2, 256, 64))   # batch, channels, output side


def transforms(m: int) -> dict:
    """A^T (m x n), G (n x 3) and B^T (n x n) of F(m, 3) at POINTS[m] and infinity; B^T solved from the
    convolution's identity sum_k A^T[i,k] G[k,t] B^T[k,s] = [s = i + t] (exact: checked)."""
    points, n = POINTS[m], m + 2
    a_t, g = np.zeros((m, n)), np.zeros((n, 3))
    for j, p in enumerate(points):
        scale = np.prod([p - q for q in points if q != p])
        a_t[:, j] = [p ** i for i in range(m)]
        g[j] = [p ** k / scale for k in range(3)]
    a_t[m - 1, n - 1] = g[n - 1, 2] = 1
    system = np.zeros((m * 3 * n, n * n))
    for row, (i, t, s) in enumerate((i, t, s) for i in range(m) for t in range(3) for s in range(n)):
        system[row, np.arange(n) * n + s] = a_t[i] * g[:, t]
    target = np.array([float(s == i + t) for i in range(m) for t in range(3) for s in range(n)])
    b_t = np.linalg.lstsq(system, target, rcond=None)[0]
    assert np.abs(system @ b_t - target).max() < 1e-9
    as_float = lambda a: torch.tensor(a).float()  # noqa: E731
    kron = lambda a: torch.kron(torch.tensor(a), torch.tensor(a)).float()  # noqa: E731
    return {"m": m, "B": kron(b_t.reshape(n, n)), "G": kron(g), "A": kron(a_t),
            "b": as_float(b_t.reshape(n, n)), "a": as_float(a_t)}


class Tiles(torch.autograd.Function):
    """(N, C, m th + 2, m tw + 2) -> overlapping (m + 2)-tiles as ((m + 2)^2, N th tw C); overlaps added back."""

    @staticmethod
    def forward(ctx, x, m):
        span = m + 2
        ctx.shape, ctx.m = x.shape, m
        return x.unfold(2, span, m).unfold(3, span, m).permute(4, 5, 0, 2, 3, 1).reshape(span * span, -1)

    @staticmethod
    def backward(ctx, grad):
        m, (n, c, h, w) = ctx.m, ctx.shape
        span, rows, cols = m + 2, (h - 2) // m, (w - 2) // m
        tiles = grad.view(span, span, n, rows, cols, c).permute(2, 5, 3, 0, 4, 1)
        out = grad.new_zeros(ctx.shape)
        out[:, :, :rows * m, :cols * m] += tiles[:, :, :, :m, :, :m].reshape(n, c, rows * m, cols * m)
        for i in range(span):  # the rows and columns a tile shares with its neighbours
            for j in range(span):
                if i >= m or j >= m:
                    out[:, :, i:i + rows * m:m, j:j + cols * m:m] += tiles[:, :, :, i, :, j]
        return out, None


def winograd(x, weight, t: dict, separable: bool):
    m = t["m"]
    span, (n, channels, h, w), filters = m + 2, x.shape, weight.shape[0]
    rows, cols = -(-(h - 2) // m), -(-(w - 2) // m)
    x = F.pad(x, (0, cols * m - (w - 2), 0, rows * m - (h - 2)))
    raw = Tiles.apply(x, m)
    tiles = torch.matmul(t["b"], (t["b"] @ raw.view(span, -1)).view(span, span, -1)) if separable else t["B"] @ raw
    kernels = t["G"] @ weight.reshape(filters, channels, 9).permute(2, 1, 0).reshape(9, -1)
    products = torch.bmm(tiles.view(span * span, -1, channels), kernels.view(span * span, channels, filters))
    if separable:
        out = torch.matmul(t["a"], (t["a"] @ products.view(span, -1)).view(m, span, -1))
    else:
        out = t["A"] @ products.view(span * span, -1)
    out = out.reshape(m, m, n, rows, cols, filters).permute(2, 5, 3, 0, 4, 1).reshape(n, filters, rows * m, cols * m)
    return out[..., :h - 2, :w - 2]


def rounding(tiles: dict) -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(2, 256, 34, 34), torch.randn(256, 256, 3, 3) / 48
    exact = F.conv2d(x.double(), weight.double())
    for m, t in tiles.items():
        error = (winograd(x, weight, t, False).double() - exact).norm() / exact.norm()
        print(f"F({m}x{m}, 3x3): relative error {error.item():.1e} (float32, N 2, C 256, 32x32)")


def timed(batch: int, channels: int, side: int, tiles: dict, reps: int) -> None:
    x = torch.randn(batch, channels, side + 2, side + 2, requires_grad=True)
    weight = torch.randn(channels, channels, 3, 3, requires_grad=True)
    grad = torch.randn(batch, channels, side, side)
    runs = {"torch": lambda: F.conv2d(x, weight), "vidcycle's F4": lambda: winograd_conv3x3(x, weight)}
    for m, t in tiles.items():
        runs[f"F{m}"] = lambda t=t: winograd(x, weight, t, False)
        runs[f"F{m} separable"] = lambda t=t: winograd(x, weight, t, True)
    times = {label: [] for label in runs}
    for rep in range(reps + 2):
        for label, run in runs.items():
            start = time.perf_counter()
            run().backward(grad)
            x.grad = weight.grad = None
            if rep >= 2:
                times[label].append(time.perf_counter() - start)
    base = statistics.median(times["torch"])
    shown = (f"{label} {statistics.median(t) * 1e3:.1f} ms ({statistics.median(t) / base:.2f}x)"
             for label, t in times.items())
    print(f"N {batch}, C {channels}, {side}x{side}: " + ", ".join(shown), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_description(), f"; {args.threads} threads", flush=True)
    tiles = {m: transforms(m) for m in POINTS}
    rounding(tiles)
    for shape in CONVOLUTIONS:
        timed(*shape, tiles, args.reps)


if __name__ == "__main__":
    main()
