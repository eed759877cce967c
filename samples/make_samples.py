#!/usr/bin/env python3
"""Procedural summer and winter landscapes: sample photos, clips with sound, and paired ground truth.

One seed makes one scene description (ridges, a ground line, a lake, trees,
clouds); `render(scene, season, ...)` draws it in either season, so the same
seed in both seasons is a pixel-aligned pair (ground truth for `vidcycle
eval`), while training sets use disjoint seeds per season (unpaired, as
CycleGAN expects). Everything is numpy and OpenCV, vectorised: a 320x180
frame renders in milliseconds.

    python samples/make_samples.py --out data/train --photos 300 --seed 1000 --size 128x96
    python samples/make_samples.py --out data/test --photos 40 --seed 900000 --paired
    python samples/make_samples.py --showcase --out samples     # the committed samples

Layout written: OUT/summer/ and OUT/winter/, files named scene_SEED.EXT.
With --paired both folders hold the same seeds (matching names); without it
summer takes even and winter odd seeds from --seed on, so no scene is in both.
"""

import argparse
import fractions
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SEASONS = ("summer", "winter")
SSAA = 2  # supersampling factor: drawn at 2x, averaged down, so edges are anti-aliased

# Palettes (RGB in 0..1). Far ridges fade toward the horizon colour (aerial perspective).
PALETTE = {
    "summer": {
        "sky_top": (0.20, 0.45, 0.85), "sky_horizon": (0.72, 0.85, 0.97), "cloud": (0.98, 0.98, 0.99),
        "cloud_shade": (0.72, 0.76, 0.84),
        "ridges": [(0.42, 0.52, 0.66), (0.30, 0.44, 0.40), (0.24, 0.40, 0.22), (0.20, 0.36, 0.16)],
        "ridge_patch": (0.16, 0.28, 0.12), "ground": (0.38, 0.62, 0.20), "ground_dark": (0.26, 0.46, 0.14),
        "conifer": (0.08, 0.28, 0.12), "broadleaf": (0.22, 0.48, 0.14), "trunk": (0.30, 0.20, 0.12),
        "water": (0.16, 0.36, 0.58), "shore": (0.42, 0.36, 0.24),
    },
    "winter": {
        "sky_top": (0.58, 0.61, 0.66), "sky_horizon": (0.82, 0.84, 0.87), "cloud": (0.88, 0.89, 0.91),
        "cloud_shade": (0.62, 0.64, 0.68),
        "ridges": [(0.80, 0.83, 0.88), (0.84, 0.86, 0.90), (0.87, 0.89, 0.93), (0.90, 0.92, 0.95)],
        "ridge_patch": (0.26, 0.27, 0.30), "ground": (0.93, 0.94, 0.97), "ground_dark": (0.72, 0.77, 0.86),
        "conifer": (0.07, 0.12, 0.10), "broadleaf": (0.33, 0.29, 0.27), "trunk": (0.22, 0.17, 0.14),
        "water": (0.74, 0.82, 0.88), "shore": (0.60, 0.62, 0.66),
        "snow": (0.95, 0.96, 0.99),
    },
}


@dataclass(frozen=True)
class Tree:
    x: float  # base position, in scene units (height = 1)
    y: float
    height: float
    kind: str  # "conifer" or "broadleaf"
    tiers: int
    lean: float


@dataclass(frozen=True)
class Scene:
    """Everything both seasons share. Coordinates: y from 0 (top) to 1 (bottom), x from 0 to aspect."""

    seed: int
    aspect: float
    ridge_knots: tuple  # per layer: (base_y, ((xs, ys) per octave, ...))
    ground_knots: tuple
    lake: tuple | None  # (centre x, top y, half width, depth)
    trees: tuple
    sun: tuple  # (x, y)
    noise_seed: int


def make_scene(seed: int, aspect: float) -> Scene:
    """A random scene description; the same (seed, aspect) always gives the same scene."""
    rng = np.random.default_rng(seed)
    horizon = rng.uniform(0.42, 0.52)
    ridges = []
    n_layers = 4
    for layer in range(n_layers):
        base = horizon - 0.24 + layer * rng.uniform(0.06, 0.09)
        amplitude = (0.16 - 0.03 * layer) * rng.uniform(0.7, 1.2)
        ridges.append((base, _fractal_knots(rng, aspect, amplitude, first_spacing=0.9 - 0.12 * layer)))
    ground_base = horizon + rng.uniform(0.06, 0.10)
    ground = (ground_base, _fractal_knots(rng, aspect, 0.03, first_spacing=1.2, octaves=2))
    lake = None
    if rng.random() < 0.75:
        cx = rng.uniform(0.2, 0.8) * aspect
        lake = (cx, ground_base + rng.uniform(0.05, 0.08), rng.uniform(0.35, 0.6), rng.uniform(0.1, 0.18))
    trees = _place_trees(rng, aspect, ground_base, lake)
    sun = (rng.uniform(0.1, 0.9) * aspect, rng.uniform(0.08, 0.2))
    return Scene(seed, aspect, tuple(ridges), ground, lake, trees, sun, int(rng.integers(1 << 30)))


def _fractal_knots(rng, aspect, amplitude, first_spacing, octaves=4):
    """Random knots for a piecewise-linear fractal profile (sharp peaks, like mountains)."""
    knots = []
    spacing = first_spacing
    for _ in range(octaves):
        xs = np.arange(-spacing, aspect + 2 * spacing, spacing) + rng.uniform(-0.3, 0.3) * spacing
        knots.append((xs, rng.uniform(-1, 1, xs.size) * amplitude))
        spacing *= 0.45
        amplitude *= 0.42
    return tuple(knots)


def _profile(knots, xs):
    base, octaves = knots
    return base + sum(np.interp(xs, kx, ky) for kx, ky in octaves)


def _place_trees(rng, aspect, ground_base, lake):
    trees = []
    n_groves = int(rng.integers(2, 5) * aspect)
    for _ in range(n_groves):
        gx, gy = rng.uniform(0, aspect), rng.uniform(ground_base + 0.04, 0.98)
        for _ in range(int(rng.integers(3, 9))):
            x = gx + rng.normal(0, 0.08)
            y = np.clip(gy + rng.normal(0, 0.025), ground_base + 0.03, 1.05)
            if lake and ((x - lake[0]) / (lake[2] + 0.06)) ** 2 + ((y - lake[1]) / (lake[3] + 0.05)) ** 2 < 1 \
                    and y > lake[1] - 0.04:
                continue
            scale = 0.35 + 1.6 * (y - ground_base)  # nearer (lower) trees are bigger
            kind = "conifer" if rng.random() < 0.7 else "broadleaf"
            trees.append(Tree(float(x), float(y), float(scale * rng.uniform(0.16, 0.3)), kind,
                              int(rng.integers(3, 5)), float(rng.normal(0, 0.01))))
    trees.sort(key=lambda t: t.y)  # painter's order: far first
    return tuple(trees)


def _value_noise(rng, height, width, cells_y, cells_x):
    """Smooth noise in 0..1: a small random grid, upsampled with bicubic interpolation."""
    grid = rng.random((cells_y + 1, cells_x + 1)).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)


def _fractal_noise(rng, height, width, aspect, base_cells, octaves=4):
    total, weight, norm = np.zeros((height, width), np.float32), 1.0, 0.0
    cells = base_cells
    for _ in range(octaves):
        total += weight * _value_noise(rng, height, width, cells, max(1, int(round(cells * aspect))))
        norm += weight
        weight *= 0.5
        cells *= 2
    return total / norm


def _smoothstep(lo, hi, x):
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _mix(image, colour, alpha):
    """Blend a colour (or an image) into `image` with per-pixel alpha, in place."""
    alpha = np.asarray(alpha, np.float32)
    if alpha.ndim == 2:
        alpha = alpha[..., None]
    image += (np.asarray(colour, np.float32) - image) * alpha


def render(scene: Scene, season: str, height: int) -> np.ndarray:
    """Draw the whole scene (width = aspect * height) in one season; returns a uint8 RGB frame."""
    if season not in PALETTE:
        raise ValueError(f"season must be one of {SEASONS}, got {season!r}")
    pal = PALETTE[season]
    winter = season == "winter"
    width = int(round(scene.aspect * height))
    h, w = height * SSAA, width * SSAA
    rng = np.random.default_rng(scene.noise_seed)  # same noise fields in both seasons
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / h
    clouds = _fractal_noise(rng, h, w, scene.aspect, 3)
    texture = _fractal_noise(rng, h, w, scene.aspect, 12, octaves=3)
    patches = _fractal_noise(rng, h, w, scene.aspect, 6)

    image = _sky(pal, winter, ys[:, None], xs, clouds, scene, h, w)
    lines = [_profile(knots, xs) for knots in scene.ridge_knots] + [_profile(scene.ground_knots, xs)]
    for layer, line in enumerate(lines[:-1]):
        # A layer is hidden below the lowest point of the next one: draw only the rows in between.
        r0, r1 = int(max(0, line.min() * h - 2)), int(min(h, lines[layer + 1].max() * h + 2))
        if r1 > r0:
            rows = slice(r0, r1)
            _ridge(image[rows], pal, winter, layer, len(lines) - 1, line, xs, ys[rows, None], patches[rows],
                   texture[rows], h)
    r0 = int(max(0, lines[-1].min() * h - 2))
    _ground(image[r0:], pal, winter, lines[-1], ys[r0:, None], texture[r0:], patches[r0:], h)
    if scene.lake:
        _lake(image, pal, winter, scene.lake, xs, ys, texture, h)
    _trees(image, pal, winter, scene.trees, h)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sky(pal, winter, yy, xs, clouds, scene, h, w):
    t = np.clip(yy / 0.55, 0, 1) ** 0.8
    top, horizon = np.asarray(pal["sky_top"], np.float32), np.asarray(pal["sky_horizon"], np.float32)
    image = np.array(np.broadcast_to(top + (horizon - top) * t[..., None], (h, w, 3)), np.float32, order="C")
    if winter:  # overcast: a low, textured cloud deck over the whole sky
        _mix(image, pal["cloud_shade"], 0.5 * _smoothstep(0.35, 0.8, clouds))
        _mix(image, pal["cloud"], 0.35 * _smoothstep(0.45, 0.2, clouds))
        return image
    sun_d = np.hypot(xs[None, :] - scene.sun[0], yy - scene.sun[1])
    _mix(image, (1.0, 0.98, 0.88), _smoothstep(0.16, 0.0, sun_d) * 0.6)
    _mix(image, (1.0, 1.0, 0.96), _smoothstep(0.035, 0.028, sun_d))
    cover = _smoothstep(0.52, 0.68, clouds) * _smoothstep(0.62, 0.2, yy)
    shade = _smoothstep(0.62, 0.85, clouds)  # thick cloud cores are greyer underneath
    cloud_colour = np.asarray(pal["cloud"], np.float32) * (1 - shade[..., None] * 0.25)
    _mix(image, cloud_colour, cover)
    return image


def _ridge(image, pal, winter, layer, n_layers, line, xs, yy, patches, texture, h):
    depth = yy - line[None, :]  # > 0 below the ridge line
    mask = _smoothstep(0.0, 1.5 / h, depth)
    haze = 0.5 * (1 - layer / (n_layers - 1))
    slope = cv2.GaussianBlur(np.gradient(line, xs)[None, :].astype(np.float32), (0, 0), sigmaX=h * 0.01)
    # Sun from the left: faces turned toward it are lit, the others shaded, fading down the slope.
    light = 1.0 - 0.3 * np.tanh(slope * 2.0) * np.exp(-depth / 0.12)
    base = np.asarray(pal["ridges"][layer], np.float32)
    colour = base * (light * (0.9 + 0.2 * texture))[..., None]
    if winter:  # snow, except on steep faces and in sparse forest/rock patches near the foot
        steep = _smoothstep(1.0, 2.2, np.abs(slope)) * _smoothstep(0.4, 0.7, texture)
        rock = np.maximum(steep, _smoothstep(0.64, 0.74, patches + 0.25 * np.clip(depth, 0, 0.3)))
        patch = np.asarray(pal["ridge_patch"], np.float32)
        colour += (patch - colour) * (rock * 0.75)[..., None]
    else:
        forest = _smoothstep(0.48, 0.62, patches) * _smoothstep(0.0, 0.06, depth)
        colour += (np.asarray(pal["ridge_patch"], np.float32) - colour) * (forest * 0.7)[..., None]
    colour += (np.asarray(pal["sky_horizon"], np.float32) - colour) * haze
    _mix(image, colour, mask)


def _ground(image, pal, winter, ground_line, yy, texture, patches, h):
    depth = yy - ground_line[None, :]
    mask = _smoothstep(0.0, 1.5 / h, depth)
    near = np.clip(depth / 0.45, 0, 1)[..., None]
    light, dark = np.asarray(pal["ground"], np.float32), np.asarray(pal["ground_dark"], np.float32)
    mottle = _smoothstep(0.35, 0.75, patches * 0.6 + texture * 0.4)[..., None]
    colour = light + (dark - light) * (mottle * (0.5 if winter else 0.8))
    colour = colour * (0.94 + 0.12 * texture[..., None]) * (1.0 - 0.15 * near)
    _mix(image, colour, mask)


def _lake(image, pal, winter, lake, xs, ys, texture, h):
    cx, top, half_width, depth = lake
    r0, r1 = int(top * h), int(min(h, (top + depth * 1.3) * h + 2))
    if r1 <= r0:
        return
    yy = ys[r0:r1, None]
    region, texture = image[r0:r1], texture[r0:r1]
    shape = ((xs[None, :] - cx) / half_width) ** 2 + ((yy - top) / depth) ** 2
    inside = _smoothstep(1.0, 0.94, shape)
    shore = _smoothstep(1.2, 1.0, shape) * (1 - inside)
    _mix(region, pal["shore"], shore * 0.8)
    # Mirror what lies above the far shore line (sky, ridges), rippled, then tint it.
    mirror = np.clip(2 * top * h - (np.arange(r0, r1) + 0.5), 0, h - 1).astype(np.int32)
    reflection = image[mirror]
    tint = np.asarray(pal["water"], np.float32)
    if winter:  # ice: pale, streaked along the surface, drifts of snow on it
        streaks = cv2.GaussianBlur(texture, (0, 0), sigmaX=h * 0.06, sigmaY=1.0)[..., None]
        colour = tint * (0.9 + 0.2 * streaks) + reflection * 0.06
        colour += (np.asarray(pal["snow"], np.float32) - colour) * _smoothstep(0.5, 0.62, streaks)
    else:
        ripple = 1 + 0.05 * np.sin(yy * 1400.0 + 30 * texture)
        colour = (reflection * 0.6 + tint * 0.4) * ripple[..., None]
    _mix(region, colour, inside)


def _trees(image, pal, winter, trees, h):
    scale = float(h)  # scene units -> supersampled pixels
    for tree in trees:
        bx, by, th = tree.x * scale, tree.y * scale, tree.height * scale
        trunk_w = max(1.0, th * 0.06)
        trunk = np.array([[bx - trunk_w, by], [bx + trunk_w, by], [bx + trunk_w, by - th * 0.3],
                          [bx - trunk_w, by - th * 0.3]])
        _poly(image, trunk, pal["trunk"])
        if tree.kind == "conifer":
            _conifer(image, pal, winter, tree, bx, by, th)
        else:
            _broadleaf(image, pal, winter, tree, bx, by, th)


def _conifer(image, pal, winter, tree, bx, by, th):
    half = th * 0.22
    for tier in range(tree.tiers):
        f0 = 0.15 + 0.85 * tier / tree.tiers  # tier bottom height, as a fraction of the tree
        f1 = min(1.0, f0 + 0.45)
        width = half * (1 - 0.55 * tier / tree.tiers)
        apex_x = bx + tree.lean * th * 10 * f1
        tier_poly = np.array([[bx - width, by - th * f0], [bx + width, by - th * f0], [apex_x, by - th * f1]])
        _poly(image, tier_poly, pal["conifer"])
        shade = np.array([[apex_x, by - th * f1], [bx + width, by - th * f0], [bx + width * 0.2, by - th * f0]])
        _poly(image, shade, np.asarray(pal["conifer"]) * 0.7)
        if winter:  # a cap of snow on the upper part of each tier, with a ragged lower edge
            c = 0.55
            left = (apex_x + (bx - width - apex_x) * c, by - th * (f1 + (f0 - f1) * c))
            right = (apex_x + (bx + width - apex_x) * c, by - th * (f1 + (f0 - f1) * c))
            cap = [[apex_x, by - th * f1], right]
            for k in range(1, 4):
                fx = right[0] + (left[0] - right[0]) * k / 4
                cap.append([fx, right[1] - th * (0.04 if k % 2 else 0.0)])
            cap.append(left)
            _poly(image, np.array(cap), pal["snow"])


def _broadleaf(image, pal, winter, tree, bx, by, th):
    cy, r = by - th * 0.62, th * 0.3
    if winter:  # bare crown: a fan of branches, snow lying along the upper ones
        colour = tuple(float(c) for c in pal["broadleaf"])
        snow = tuple(float(c) for c in pal["snow"])
        thick = max(1, int(round(th * 0.025)))
        for k in range(7):
            angle = np.pi * (0.2 + 0.6 * k / 6) + tree.lean * 5
            sx, sy = bx, by - th * (0.3 + 0.05 * (k % 3))
            ex, ey = bx + np.cos(angle) * r * 1.1, cy - np.sin(angle) * r * 0.9 + r * 0.2
            start, end = (int(sx * 16), int(sy * 16)), (int(ex * 16), int(ey * 16))
            cv2.line(image, start, end, colour, thick, cv2.LINE_8, 4)
            cv2.line(image, (int((sx * 0.3 + ex * 0.7) * 16), int((sy * 0.3 + ey * 0.7) * 16) - 16 * thick),
                     (end[0], end[1] - 16 * thick), snow, thick, cv2.LINE_8, 4)
        return
    colour = np.asarray(pal["broadleaf"])
    for dx, dy, rr, k in ((0, 0, 1.0, 1.0), (-0.5, 0.25, 0.7, 0.85), (0.5, 0.2, 0.75, 0.8), (0.1, -0.4, 0.65, 1.1)):
        centre = (int(round((bx + dx * r) * 16)), int(round((cy + dy * r) * 16)))
        cv2.circle(image, centre, int(round(rr * r * 16)), tuple(float(c) for c in colour * k), -1,
                   cv2.LINE_8, 4)


def _poly(image, points, colour):
    pts = np.round(np.asarray(points, np.float64) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(image, [pts], tuple(float(c) for c in colour), cv2.LINE_8, 4)


# ---------------------------------------------------------------- photos and clips

def render_photo(seed: int, season: str, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return render(make_scene(seed, width / height), season, height)[:, :width]


def pan_frames(seed: int, season: str, size: tuple[int, int], seconds: float, fps: int, pan: float = 1.6):
    """Frames of a slow, eased camera pan across a scene `pan` times as wide as the frame."""
    width, height = size
    wide = render(make_scene(seed, pan * width / height), season, height)
    travel = wide.shape[1] - width - 1
    count = int(round(seconds * fps))
    for i in range(count):
        t = i / max(1, count - 1)
        offset = travel * (0.5 - 0.5 * np.cos(np.pi * t))
        shift = np.float32([[1, 0, -offset], [0, 1, 0]])
        yield cv2.warpAffine(wide, shift, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)


def ambience(seed: int, season: str, seconds: float, rate: int = 44100) -> np.ndarray:
    """Soft synthetic ambience, mono float32: wind (band-limited noise); birdsong chirps in summer."""
    rng = np.random.default_rng(seed + (0 if season == "summer" else 1))
    n = int(rate * seconds)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    centre = 250.0 if season == "summer" else 450.0
    spectrum *= np.exp(-0.5 * (np.log(np.maximum(freqs, 1) / centre) / 0.8) ** 2)
    wind = np.fft.irfft(spectrum, n)
    t = np.arange(n) / rate
    gusts = 0.6 + 0.4 * np.sin(2 * np.pi * 0.23 * t + rng.uniform(0, 6)) * np.sin(2 * np.pi * 0.07 * t + 1)
    audio = wind / (np.abs(wind).max() + 1e-9) * gusts * (0.18 if season == "summer" else 0.3)
    if season == "summer":
        for start in rng.uniform(0, max(0.1, seconds - 0.5), int(seconds * 1.5)):
            for k in range(int(rng.integers(2, 5))):  # a short phrase of falling chirps
                begin = int((start + k * 0.12) * rate)
                length = int(rate * rng.uniform(0.05, 0.09))
                if begin + length >= n:
                    break
                tt = np.arange(length) / rate
                f0, f1 = rng.uniform(3000, 4500), rng.uniform(1800, 2800)
                phase = 2 * np.pi * (f0 * tt + (f1 - f0) * tt ** 2 / (2 * tt[-1]))
                audio[begin:begin + length] += 0.12 * np.sin(phase) * np.hanning(length)
    fade = np.minimum(1, np.minimum(t, seconds - t) / 0.3)
    return (audio * fade).astype(np.float32)


def write_clip(path: Path, frames, fps: int, audio: np.ndarray, rate: int = 44100) -> int:
    """H.264 (yuv420p, BT.601 tagged) + AAC in MP4, written to a temporary name then renamed."""
    import av

    tmp = path.with_name(f".{path.name}.part")
    count = 0
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "medium"})
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, fps)
        stream.codec_context.colorspace = 6  # SMPTE 170M (BT.601), what swscale's rgb24 -> yuv uses
        stream.codec_context.color_range = 1  # limited (TV) range
        audio_stream = container.add_stream("aac", rate=rate)
        audio_stream.layout = "mono"
        for frame_rgb in frames:
            if count == 0:
                stream.height, stream.width = frame_rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
            frame.pts = count
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
        step = 1024
        for start in range(0, audio.size, step):
            chunk = audio[start:start + step][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio_stream.encode(frame))
        container.mux(audio_stream.encode(None))
    tmp.replace(path)
    return count


def write_image(path: Path, rgb: np.ndarray, quality: int = 92) -> None:
    tmp = path.with_name(f".{path.name}.part{path.suffix}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"{path}: could not write image")
    tmp.replace(path)


def seeds_for(season: str, seed: int, count: int, paired: bool) -> list[int]:
    if paired:
        return [seed + i for i in range(count)]
    offset = SEASONS.index(season)
    return [seed + 2 * i + offset for i in range(count)]


def make_set(out: Path, photos: int, clips: int, seed: int, size, seconds: float, fps: int,
             paired: bool, fmt: str, seasons=SEASONS) -> list[Path]:
    written = []
    for season in seasons:
        folder = out / season
        folder.mkdir(parents=True, exist_ok=True)
        for s in seeds_for(season, seed, photos, paired):
            path = folder / f"scene_{s:06d}.{fmt}"
            write_image(path, render_photo(s, season, size))
            written.append(path)
        for s in seeds_for(season, seed + 500_000, clips, paired):
            path = folder / f"pan_{s:06d}.mp4"
            write_clip(path, pan_frames(s, season, size, seconds, fps), fps, ambience(s, season, seconds))
            written.append(path)
    return written


def make_showcase(out: Path, seed: int, size, seconds: float, fps: int) -> list[Path]:
    """The small set committed under samples/: one paired clip pair and three paired photo pairs."""
    written = []
    (out / "photos").mkdir(parents=True, exist_ok=True)
    for season in SEASONS:
        path = out / f"{season}_clip.mp4"
        write_clip(path, pan_frames(seed, season, size, seconds, fps), fps, ambience(seed, season, seconds))
        written.append(path)
        for i in range(3):
            path = out / "photos" / f"{season}_{i + 1}.jpg"
            write_image(path, render_photo(seed + 1 + i, season, size))
            written.append(path)
    return written


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {text!r}") from None
    if width < 8 or height < 8 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"size {text}: sides must be even and at least 8 (H.264 needs even)")
    return width, height


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--photos", type=int, default=0, help="photos per season")
    parser.add_argument("--clips", type=int, default=0, help="clips per season")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed")
    parser.add_argument("--size", type=parse_size, default=(320, 180), help="WxH (default 320x180)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4)")
    parser.add_argument("--fps", type=int, default=24, help="clip frame rate (default 24)")
    parser.add_argument("--paired", action="store_true",
                        help="same seeds in both seasons (ground truth); default: disjoint seeds")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="photo format (default png)")
    parser.add_argument("--season", choices=SEASONS, help="only this season")
    parser.add_argument("--showcase", action="store_true",
                        help="write the committed sample set: summer_clip.mp4, winter_clip.mp4, photos/")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.showcase:
        written = make_showcase(args.out, args.seed, args.size, args.seconds, args.fps)
    else:
        if args.photos <= 0 and args.clips <= 0:
            parser.error("nothing to make: pass --photos N and/or --clips N (or --showcase)")
        seasons = (args.season,) if args.season else SEASONS
        written = make_set(args.out, args.photos, args.clips, args.seed, args.size, args.seconds, args.fps,
                           args.paired, args.format, seasons)
    print(f"wrote {len(written)} files under {args.out} in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
