"""Pictures of a training run, drawn with OpenCV: loss curves and labelled sample grids.

No plotting library: a chart is a few lines, ticks and labels on a uint8 RGB
canvas, which keeps matplotlib out of the dependencies and the drawing fast
enough to redo at every checkpoint.
"""

import math

import cv2
import numpy as np

from vidcycle.files import write_atomic

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, GRID, PAPER = (40, 40, 40), (225, 225, 225), (255, 255, 255)
# Colour per loss (RGB), distinct on white and stable across runs.
GAP, LABEL_WIDTH = 4, 120  # sample grids: pixels between cells, and for the row labels
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_png(path, rgb: np.ndarray) -> None:
    """Write atomically: a reader never sees half a picture."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    write_atomic(path, data.tobytes())


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased at the start (as TensorBoard smooths)."""
    out, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** n))
    return out


def loss_chart(steps: list[int], panels: list[tuple[str, dict[str, list[float]]]], width: int = 960,
               panel_height: int = 300, title: str = "", x_label: str = "iteration") -> np.ndarray:
    """Stacked panels, one per group of losses; each curve smoothed, the raw values faint behind it. A panel
    (name, series, its own steps) has values at other steps than `steps` (a score taken at checkpoints)."""
    header = 34 if title else 0
    canvas = np.full((header + panel_height * len(panels), width, 3), PAPER, np.uint8)
    if title:
        cv2.putText(canvas, title, (12, 24), FONT, 0.6, INK, 1, cv2.LINE_AA)
    for n, (name, series, *own) in enumerate(panels):
        _panel(canvas, (0, header + n * panel_height, width, panel_height), name, own[0] if own else steps, series,
               x_label)
    return canvas


def _panel(canvas, box, name: str, steps: list[int], series: dict[str, list[float]],
           x_label: str = "iteration") -> None:
    x0, y0, width, height = box
    left, right, top, bottom = x0 + 70, x0 + width - 190, y0 + 28, y0 + height - 40
    cv2.putText(canvas, name, (left, y0 + 18), FONT, 0.5, INK, 1, cv2.LINE_AA)
    finite = [v for values in series.values() for v in values if math.isfinite(v)]
    if not steps or not finite:
        cv2.putText(canvas, "no data yet", (left + 10, (top + bottom) // 2), FONT, 0.5, INK, 1, cv2.LINE_AA)
        return
    smoothing = min(0.9, max(0.0, 1 - 8 / max(len(steps), 1)))
    curves = {key: smooth(values, smoothing) for key, values in series.items()}
    low, high = _nice_range(min(finite), max(finite))
    first, last = steps[0], max(steps[-1], steps[0] + 1)

    def point(step, value):
        px = left + (step - first) / (last - first) * (right - left)
        py = bottom - (value - low) / (high - low) * (bottom - top)
        return int(round(px)), int(round(min(max(py, top), bottom)))

    for tick in _ticks(low, high):
        _, py = point(first, tick)
        cv2.line(canvas, (left, py), (right, py), GRID, 1)
        cv2.putText(canvas, _label(tick), (x0 + 6, py + 4), FONT, 0.4, INK, 1, cv2.LINE_AA)
    for tick in _ticks(first, last, integer=True):
        px, _ = point(tick, low)
        cv2.line(canvas, (px, bottom), (px, bottom + 4), INK, 1)
        text = _label(tick)
        cv2.putText(canvas, text, (px - 4 * len(text), bottom + 18), FONT, 0.4, INK, 1, cv2.LINE_AA)
    cv2.putText(canvas, x_label, ((left + right) // 2 - 30, bottom + 34), FONT, 0.4, INK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (right, bottom), INK, 1)
    for n, key in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        faint = tuple(int(c + (255 - c) * 0.75) for c in colour)
        if len(steps) > 1:
            raw = np.array([point(s, v) for s, v in zip(steps, series[key]) if math.isfinite(v)], np.int32)
            cv2.polylines(canvas, [raw], False, faint, 1, cv2.LINE_AA)
            line = np.array([point(s, v) for s, v in zip(steps, curves[key]) if math.isfinite(v)], np.int32)
            cv2.polylines(canvas, [line], False, colour, 2, cv2.LINE_AA)
        else:
            cv2.circle(canvas, point(steps[0], series[key][0]), 3, colour, -1)
        legend_y = top + 8 + 18 * n
        cv2.line(canvas, (right + 12, legend_y), (right + 36, legend_y), colour, 2)
        cv2.putText(canvas, f"{key} {curves[key][-1]:.3g}", (right + 42, legend_y + 4), FONT, 0.42, INK, 1,
                    cv2.LINE_AA)


def _nice_range(low: float, high: float) -> tuple[float, float]:
    low = min(low, 0.0)
    if high - low < 1e-9:
        high = low + 1.0
    return low, high + 0.05 * (high - low)


def _ticks(low: float, high: float, integer: bool = False, count: int = 5) -> list[float]:
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    if integer:
        step = max(1, round(step))
    start = math.ceil(low / step) * step
    return [start + k * step for k in range(int((high - start) / step) + 1)]


def _label(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}" if abs(value) < 100000 else f"{value:.0e}"
    return f"{value:.3g}"


def image_grid(rows: list[tuple[str, np.ndarray]], min_cell: int = 96, title: str = "") -> np.ndarray:
    """Rows of same-sized uint8 NHWC images, each row labelled on the left.

    Small training crops are enlarged (nearest neighbour, so pixels stay honest)
    until a cell is at least `min_cell` pixels wide, and laid out with GAP
    pixels of paper around each (as torchvision's make_grid did, whose import
    cost every training run 1.3 s of start-up).
    """
    height, width = rows[0][1].shape[1:3]
    scale = max(1, math.ceil(min_cell / width))
    cell_h, cell_w = height * scale, width * scale
    columns = max(images.shape[0] for _, images in rows)
    grid = np.full((len(rows) * (cell_h + GAP) + GAP, columns * (cell_w + GAP) + GAP, 3), PAPER[0], np.uint8)
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            top, left = GAP + r * (cell_h + GAP), GAP + c * (cell_w + GAP)
            grid[top:top + cell_h, left:left + cell_w] = cv2.resize(image, (cell_w, cell_h),
                                                                    interpolation=cv2.INTER_NEAREST)
    header = 26 if title else 0
    canvas = np.full((header + grid.shape[0], LABEL_WIDTH + grid.shape[1], 3), PAPER, np.uint8)
    canvas[header:, LABEL_WIDTH:] = grid
    if title:
        cv2.putText(canvas, title, (8, 18), FONT, 0.5, INK, 1, cv2.LINE_AA)
    for r, (label, _) in enumerate(rows):
        y = header + GAP + r * (height * scale + GAP)
        cv2.putText(canvas, label, (6, y + height * scale // 2 + 5), FONT, 0.45, INK, 1, cv2.LINE_AA)
    return canvas
