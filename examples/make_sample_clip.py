"""A deterministic synthetic matting clip with an exact alpha and a coarse, flawed prior.

    python examples/make_sample_clip.py OUT_DIR [--frames 24] [--size 1920x1080] [--seed 0] [--plate png|exr]

writes, for frames 1..N:

- ``OUT_DIR/plate.%04d.png``: 8-bit sRGB-encoded plate (``--plate exr``: ``plate.%04d.exr``,
  float scene-linear Rec.709, which ``read_rgb`` encodes with the sRGB curve on reading);
- ``OUT_DIR/alpha.%04d.exr``: the exact alpha the plate was composited with (float, channel "A");
- ``OUT_DIR/prior.%04d.exr``: a coarse prior at 1/8 size (the engine upsamples priors): the
  alpha area-downsampled, blurred, with the errors a real segmenter makes (see ``make_prior``);
- ``OUT_DIR/trimap.%04d.png``: an 8-bit trimap made from the exact alpha as matting benchmarks
  make theirs (Composition-1k's are the ground truth's unknown pixels dilated): 128 within
  ``TRIMAP_RADIUS`` px (at 1080p, scaled with the height) of a pixel strictly between 0 and 1,
  else 0 or 255;
- ``OUT_DIR/clean.png`` (``clean.exr`` with ``--plate exr``): the static background alone, the
  shot's clean plate.

The scene: a head-and-shoulders subject swaying in front of a static textured background
(gradients, multi-scale colour noise, soft stripes in hair and skin tones, bokeh discs and a
fixed grain, so neither a colour key nor a flat-background assumption works). The subject has
a hair mass with hundreds of curved strands (widths from about 2 px down to sub-pixel,
tapering, semi-transparent; flyaways on top), a semi-transparent woven veil draped over one
shoulder and past the silhouette, and a waving hand with horizontal motion blur. The
background never changes, so the sparse engine's temporal reuse has work to skip.

Compositing is done in linear light, layer over layer with premultiplied colour, so the
alpha written is exactly the coverage used: ``plate = alpha * fg + (1 - alpha) * bg``, then
the sRGB curve for the PNG. Everything is vectorized numpy (strands are splatted with
``np.bincount``): a 1080p frame takes a fraction of a second.

Importable: ``make_frame(index, size, seed, frames) -> (plate_srgb, alpha, prior)`` and
``make_clip(frames, size, seed)`` build clips in memory (tests use small ones).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

PRIOR_SCALE = 8
TRIMAP_RADIUS = 10  # px at 1080p: a trimap drawn loosely around the edge
DEFAULT_FRAMES = 24


# --------------------------------------------------------------------------- colour

def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """The piecewise sRGB transfer function, for linear values in [0, 1]."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear,
                    1.055 * np.power(linear, 1 / 2.4) - 0.055).astype(np.float32)


# --------------------------------------------------------------------------- helpers

def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float, channels: int) -> np.ndarray:
    """Value noise in [0, 1]: a random grid with ``cells`` cells across the short side, bicubic-upsampled."""
    short = min(height, width)
    gh, gw = max(2, round(cells * height / short)) + 3, max(2, round(cells * width / short)) + 3
    grid = torch.from_numpy(rng.random((1, channels, gh, gw), dtype=np.float32))
    up = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0).numpy().clip(0.0, 1.0)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_alpha(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
                   power: float = 2.0) -> np.ndarray:
    """Anti-aliased coverage of a (super-)ellipse: 0.5 - signed distance, clipped (a 1-px box edge)."""
    dx, dy = (xx - cx) / rx, (yy - cy) / ry
    ax, ay = np.abs(dx) + 1e-12, np.abs(dy) + 1e-12
    f = (ax ** power + ay ** power) ** (1.0 / power)
    # |grad f| for the distance estimate (f - 1) / |grad f|
    gx = ax ** (power - 1) * f ** (1 - power) / rx
    gy = ay ** (power - 1) * f ** (1 - power) / ry
    distance = (f - 1.0) / np.sqrt(gx * gx + gy * gy)
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


class _Layers:
    """Back-to-front 'over' compositing with premultiplied colour (linear light)."""

    def __init__(self, height: int, width: int):
        self.colour = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)
        self.prior_alpha = np.zeros((height, width), np.float32)  # the layers a segmenter sees

    def over(self, alpha: np.ndarray, colour: np.ndarray, box: tuple[slice, slice], in_prior: bool = True,
             prior_alpha: np.ndarray | None = None) -> None:
        """Composite ``alpha`` (h, w) of colour (h, w, 3) or (3,) over the layers inside ``box``."""
        a = alpha[..., None]
        self.colour[box] = a * colour + (1.0 - a) * self.colour[box]
        self.alpha[box] = alpha + (1.0 - alpha) * self.alpha[box]
        if in_prior or prior_alpha is not None:
            pa = alpha if prior_alpha is None else prior_alpha
            self.prior_alpha[box] = pa + (1.0 - pa) * self.prior_alpha[box]


def _box(cy: float, cx: float, ry: float, rx: float, height: int, width: int, margin: float = 4.0):
    top, bottom = max(0, int(cy - ry - margin)), min(height, int(math.ceil(cy + ry + margin)) + 1)
    left, right = max(0, int(cx - rx - margin)), min(width, int(math.ceil(cx + rx + margin)) + 1)
    return slice(top, max(top, bottom)), slice(left, max(left, right))


def _grid(box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    yy = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :] + 0.5
    return yy, xx


# --------------------------------------------------------------------------- background

@functools.lru_cache(maxsize=4)
def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Static linear-light background (H, W, 3), float32, read-only."""
    rng = np.random.default_rng([seed, 1])
    yy = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xx = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    top, bottom = np.array([0.22, 0.30, 0.42], np.float32), np.array([0.30, 0.19, 0.10], np.float32)
    bg = top + (bottom - top) * yy[..., None] + 0.08 * (xx[..., None] - 0.5) * np.array([1.0, 0.6, -0.4], np.float32)
    # multi-scale colour noise (large blotches down to fine texture)
    for cells, amplitude in ((3, 0.16), (10, 0.10), (35, 0.06), (140, 0.045)):
        bg = bg + amplitude * (_smooth_noise(rng, height, width, cells, 3) - 0.5)
    # soft diagonal stripes in hair-like and skin-like tones: defeats a colour key
    scale = height / 1080.0
    phase = (xx * width * 0.8 + yy * height * 0.6) / (90.0 * scale)
    stripe = _smoothstep(0.35, 0.65, 0.5 + 0.5 * np.sin(2 * np.pi * phase))
    stripe_mask = _smoothstep(0.45, 0.7, _smooth_noise(rng, height, width, 4, 1)[..., 0])
    hair_tone, skin_tone = np.array([0.07, 0.045, 0.03], np.float32), np.array([0.55, 0.36, 0.26], np.float32)
    tone = np.where((xx < 0.5)[..., None], hair_tone, skin_tone)
    weight = (0.7 * stripe * stripe_mask)[..., None]
    bg = bg * (1 - weight) + tone * weight
    # bokeh discs
    for _ in range(14):
        cy, cx = rng.random() * height, rng.random() * width
        radius = (20 + 50 * rng.random()) * scale
        box = _box(cy, cx, radius, radius, height, width, 3 * scale)
        y, x = _grid(box)
        disc = np.clip((radius - np.sqrt((y - cy) ** 2 + (x - cx) ** 2)) / (3 * scale) + 0.5, 0, 1)
        colour = rng.random(3).astype(np.float32) * 0.6 + 0.2
        bg[box] = bg[box] * (1 - 0.55 * disc[..., None]) + 0.55 * disc[..., None] * colour
    # fixed fine grain (static, so temporal reuse still sees an identical background)
    bg = bg + 0.02 * (rng.random((height, width, 3), dtype=np.float32) - 0.5)
    bg = np.clip(bg, 0.004, 1.0).astype(np.float32)
    bg.setflags(write=False)
    return bg


# --------------------------------------------------------------------------- hair

@functools.lru_cache(maxsize=4)
def _strand_params(seed: int) -> dict[str, np.ndarray]:
    """Per-strand parameters in units of the frame height (resolution independent)."""
    rng = np.random.default_rng([seed, 2])
    body, fly = 320, 170
    n = body + fly
    theta = np.concatenate([  # root angle on the hair outline, 0 = top, positive = right
        np.sign(rng.random(body) - 0.5) * rng.uniform(0.9, 1.9, body),
        rng.uniform(-1.3, 1.3, fly)])
    return {
        "count": n,
        "flyaway": np.arange(n) >= body,
        "theta": theta.astype(np.float32),
        "length": np.concatenate([rng.uniform(0.18, 0.46, body), rng.uniform(0.04, 0.17, fly)]).astype(np.float32),
        "width": np.concatenate([rng.uniform(0.5, 2.2, body), rng.uniform(0.25, 0.9, fly)]).astype(np.float32),
        # initial direction: off the outline's normal by this angle
        "spread": np.concatenate([rng.normal(0, 0.15, body), rng.normal(0, 0.35, fly)]).astype(np.float32),
        "gravity": np.concatenate([rng.uniform(0.1, 0.5, body), rng.uniform(0.05, 0.4, fly)]).astype(np.float32),
        "curl_amp": rng.uniform(0.0, 0.012, n).astype(np.float32),
        "curl_freq": rng.uniform(0.5, 2.5, n).astype(np.float32),
        "curl_phase": rng.uniform(0, 2 * np.pi, n).astype(np.float32),
        "lag": rng.uniform(0.6, 1.4, n).astype(np.float32),
        "opacity": rng.uniform(0.6, 1.0, n).astype(np.float32),
        "tone": rng.uniform(0.7, 1.4, n).astype(np.float32),
    }


def _splat(height: int, width: int, y: np.ndarray, x: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Bilinear splat of point masses (pixel centres at +0.5) into an (H, W) array."""
    fy, fx = y - 0.5, x - 0.5
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    wy, wx = fy - y0, fx - x0
    out = np.zeros(height * width, np.float64)
    for dy, wy_ in ((0, 1 - wy), (1, wy)):
        for dx, wx_ in ((0, 1 - wx), (1, wx)):
            yi, xi = y0 + dy, x0 + dx
            ok = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
            out += np.bincount(yi[ok] * width + xi[ok], weights=(mass * wy_ * wx_)[ok], minlength=height * width)
    return out.reshape(height, width).astype(np.float32)


def _hair(height, width, seed, head_cy, head_cx, head_ry, head_rx, velocity, t):
    """Strand density splats: (density of all strands, density in the prior, tone-weighted density)."""
    p = _strand_params(seed)
    width_scale = math.sqrt(height / 1080.0)  # strands stay visible (sub-pixel, semi-transparent) at small sizes
    step = 0.5  # px between samples along a strand
    ys, xs, masses, tones, keep = [], [], [], [], []
    for i in range(p["count"]):
        theta = p["theta"][i]
        # root on the hair outline (slightly outside the head ellipse)
        ry_, rx_ = head_ry * 1.06, head_rx * 1.08
        root = np.array([head_cy - ry_ * math.cos(theta), head_cx + rx_ * math.sin(theta)], np.float32)
        normal = np.array([-math.cos(theta) / ry_, math.sin(theta) / rx_], np.float32)
        normal /= np.linalg.norm(normal)
        spread = p["spread"][i]
        if not p["flyaway"][i]:  # long hair falls along the head, not straight out of it
            normal = normal * 0.45 + np.array([1.0, 0.0], np.float32)
            normal /= np.linalg.norm(normal)
        direction = np.array([normal[0] * math.cos(spread) - normal[1] * math.sin(spread),
                              normal[0] * math.sin(spread) + normal[1] * math.cos(spread)], np.float32)
        length = p["length"][i] * height
        samples = max(4, int(length / step))
        u = np.linspace(0.0, 1.0, samples, dtype=np.float32)
        perpendicular = np.array([-direction[1], direction[0]], np.float32)
        curl = p["curl_amp"][i] * height * np.sin(2 * np.pi * p["curl_freq"][i] * u + p["curl_phase"][i] + 0.8 * t)
        gravity = p["gravity"][i] * length * u * u
        drag = -p["lag"][i] * velocity * 2.5 * u * u  # the tips trail the motion
        py = root[0] + length * u * direction[0] + gravity + curl * perpendicular[0]
        px = root[1] + length * u * direction[1] + drag + curl * perpendicular[1]
        w = p["width"][i] * width_scale * (1.0 - 0.75 * u)  # tapering
        fade = p["opacity"][i] * np.clip((1.0 - u) / 0.25, 0.0, 1.0) ** 0.5
        # a strand wider than ~1 px is drawn as parallel sub-lines so its profile is a box, not a tent
        lines = max(1, int(math.ceil(float(w.max()))))
        for k in range(lines):
            offset = ((k + 0.5) / lines - 0.5) * w
            ys.append(py + offset * perpendicular[0])
            xs.append(px + offset * perpendicular[1])
            masses.append(w / lines * step * fade)
            tones.append(np.full(samples, p["tone"][i], np.float32))
            keep.append(np.full(samples, (not p["flyaway"][i]) and p["width"][i] >= 1.0, bool))
    y, x, mass = np.concatenate(ys), np.concatenate(xs), np.concatenate(masses)
    tone, kept = np.concatenate(tones), np.concatenate(keep)
    density = _splat(height, width, y, x, mass)
    prior_density = _splat(height, width, y[kept], x[kept], mass[kept])
    tone_density = _splat(height, width, y, x, mass * tone)
    return density, prior_density, tone_density


# --------------------------------------------------------------------------- the subject

def _subject(index: int, height: int, width: int, seed: int,
             frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Premultiplied fg colour (H, W, 3), exact alpha (H, W), the alpha the prior is built from, geometry."""
    s = height / 1080.0
    t = 2 * np.pi * (index - 1) / max(frames, 1)
    sway = 0.06 * width * math.sin(t)
    velocity = 0.06 * width * math.cos(t) * 2 * np.pi / max(frames, 1)  # px per frame
    cx = 0.5 * width + sway
    layers = _Layers(height, width)
    cloth_noise = _cached_noise(height, width, seed, 3, 40, 1)
    skin = np.array([0.62, 0.38, 0.27], np.float32)

    # torso (superellipse shoulders), woven cloth
    cy_t, ry_t, rx_t = 1.06 * height, 0.44 * height, 0.36 * height
    box = _box(cy_t, cx, ry_t, rx_t, height, width)
    yy, xx = _grid(box)
    alpha = _ellipse_alpha(yy, xx, cy_t, cx, ry_t, rx_t, power=3.0)
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx - cx) / (7 * s)) * np.sin(2 * np.pi * yy / (7 * s))
    colour = np.array([0.10, 0.16, 0.30], np.float32) * (0.75 + 0.35 * weave[..., None] + 0.3 * cloth_noise[box])
    layers.over(alpha, colour, box)

    # neck and head
    head_cy, head_ry, head_rx = 0.36 * height, 0.165 * height, 0.125 * height
    head_cx = cx + 0.02 * width * math.sin(t + 0.6)
    for cy_, cx_, ry_, rx_ in ((0.56 * height, cx + 0.3 * (head_cx - cx), 0.13 * height, 0.06 * height),
                               (head_cy, head_cx, head_ry, head_rx)):
        box = _box(cy_, cx_, ry_, rx_, height, width)
        yy, xx = _grid(box)
        alpha = _ellipse_alpha(yy, xx, cy_, cx_, ry_, rx_)
        shade = 0.8 + 0.25 * np.clip(1 - ((xx - cx_ + 0.3 * rx_) / rx_) ** 2, 0, 1)
        layers.over(alpha, skin * shade[..., None], box)

    # waving hand: a forearm and a hand, horizontally motion blurred (box over the shutter)
    hand_t = 3 * t
    hand_cx = cx + 0.40 * height + 0.09 * height * math.sin(hand_t)
    hand_v = 0.09 * height * math.cos(hand_t) * 3 * 2 * np.pi / max(frames, 1)
    blur = max(1, int(round(abs(hand_v) * 0.5)))  # 180-degree shutter
    hand_cy = 0.42 * height
    box = _box(0.5 * (hand_cy + 0.75 * height), 0.5 * (hand_cx + cx + 0.3 * height), 0.25 * height,
               0.5 * abs(hand_cx - cx - 0.3 * height) + 0.1 * height + blur, height, width)
    yy, xx = _grid(box)
    arm = _ellipse_alpha(yy, xx, hand_cy, hand_cx, 0.07 * height, 0.05 * height)
    # forearm: a thick segment from the elbow to the hand
    ey, ex = 0.72 * height, cx + 0.30 * height
    dy, dx = hand_cy - ey, hand_cx - ex
    seg = max(dy * dy + dx * dx, 1e-6)
    u = np.clip(((yy - ey) * dy + (xx - ex) * dx) / seg, 0, 1)
    dist = np.sqrt((yy - ey - u * dy) ** 2 + (xx - ex - u * dx) ** 2)
    arm = np.maximum(arm, np.clip(0.045 * height - dist + 0.5, 0, 1))
    if blur > 1:
        padded = np.pad(arm, ((0, 0), (blur // 2 + 1, blur - blur // 2)), mode="edge")
        csum = np.cumsum(padded, axis=1, dtype=np.float64)
        arm = ((csum[:, blur:blur + arm.shape[1]] - csum[:, :arm.shape[1]]) / blur).astype(np.float32)
    layers.over(arm, skin * 0.9, box)

    # hair mass (behind the strands)
    box = _box(head_cy - 0.03 * height, head_cx, head_ry * 1.06, head_rx * 1.08, height, width)
    yy, xx = _grid(box)
    cap = _ellipse_alpha(yy, xx, head_cy - 0.03 * height, head_cx, head_ry * 1.06, head_rx * 1.08)
    face = _ellipse_alpha(yy, xx, head_cy + 0.05 * height, head_cx, 0.15 * height, 0.95 * head_rx)
    cap *= 1.0 - face * _smoothstep(head_cy - 0.09 * height, head_cy - 0.06 * height, yy)  # the face stays clear
    hair_colour = np.array([0.085, 0.05, 0.028], np.float32)
    layers.over(cap.astype(np.float32), hair_colour * (0.8 + 0.4 * cloth_noise[box]), box)

    # strands: optical density -> alpha = 1 - exp(-density)
    density, prior_density, tone_density = _hair(height, width, seed, head_cy, head_cx, head_ry, head_rx, velocity, t)
    strand_alpha = (1.0 - np.exp(-density)).astype(np.float32)
    prior_strands = (1.0 - np.exp(-prior_density)).astype(np.float32)
    tone = np.where(density > 1e-8, tone_density / np.maximum(density, 1e-8), 1.0)
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    highlight = 1.0 + 1.2 * np.clip(np.sin(2 * np.pi * rows / (0.09 * height)), 0, 1) ** 4  # sheen bands
    everything = (slice(0, height), slice(0, width))
    layers.over(strand_alpha, hair_colour * tone[..., None] * highlight[..., None], everything,
                prior_alpha=prior_strands)

    # semi-transparent woven veil over the left shoulder, fluttering, past the silhouette
    top, bottom = head_cy + 0.02 * height, 0.98 * height
    box = (slice(int(top), min(height, int(bottom) + 1)),
           slice(max(0, int(cx - 0.55 * height)), min(width, int(cx + 0.05 * height))))
    yy, xx = _grid(box)
    v = (yy - top) / (bottom - top)
    left = cx - head_rx * 0.9 - (0.24 * height) * v - 0.03 * height * np.sin(6.0 * v + 1.3 * t) * v
    right = cx - head_rx * 0.2 + 0.05 * height * v
    soft = 3.0 * s + 10.0 * s * v  # softer towards the flowing hem
    inside = (_smoothstep(-soft, soft, xx - left) * _smoothstep(-soft, soft, right - xx)
              * _smoothstep(0, 12 * s, yy - top) * _smoothstep(bottom, bottom - 12 * s, yy))  # soft hem
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * xx / (4.0 * s)) * np.sin(2 * np.pi * yy / (4.0 * s))
    folds = 0.5 + 0.5 * np.sin(2 * np.pi * (xx - left) / (0.05 * height) + 2 * v)
    veil = (inside * (0.30 + 0.15 * weave + 0.15 * folds)).astype(np.float32)
    colour = np.array([0.72, 0.68, 0.80], np.float32) * (0.8 + 0.3 * folds[..., None])
    # the segmenter sees the veil as fainter than it is
    layers.over(veil, colour, box, prior_alpha=(veil * 0.7).astype(np.float32))

    geometry = {"hand": (hand_cy, hand_cx), "torso_right": (0.75 * height, cx + 0.3 * height)}
    return layers.colour, layers.alpha, layers.prior_alpha, geometry


@functools.lru_cache(maxsize=8)
def _cached_noise(height: int, width: int, seed: int, stream: int, cells: float, channels: int) -> np.ndarray:
    noise = _smooth_noise(np.random.default_rng([seed, stream]), height, width, cells, channels)
    noise.setflags(write=False)
    return noise


# --------------------------------------------------------------------------- the prior

def prior_size(height: int, width: int) -> tuple[int, int]:
    return max(1, round(height / PRIOR_SCALE)), max(1, round(width / PRIOR_SCALE))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = (taps / taps.sum()).view(1, 1, -1, 1)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), taps)
    return F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), taps.transpose(2, 3))


def make_prior(prior_alpha: np.ndarray, index: int, seed: int, geometry: dict) -> np.ndarray:
    """What a real segmenter gives, at 1/8 size: the (flawed) alpha area-downsampled and blurred.

    Its errors: thin strands and flyaways missing (``prior_alpha`` never had them), the veil
    too faint, the right side of the torso eroded and the waving hand dilated by about one
    low-resolution pixel (8 px at full size), a false-positive blob on the background, and a
    little frame-to-frame flicker.
    """
    height, width = prior_alpha.shape
    h, w = prior_size(height, width)
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(prior_alpha))[None, None], size=(h, w), mode="area")
    yy = (torch.arange(h, dtype=torch.float32)[:, None] + 0.5) * height / h
    xx = (torch.arange(w, dtype=torch.float32)[None, :] + 0.5) * width / w
    eroded = -F.max_pool2d(-x, 3, 1, 1)
    dilated = F.max_pool2d(x, 3, 1, 1)
    ty, tx = geometry["torso_right"]
    torso = ((yy > ty - 0.15 * height) & (xx > tx - 0.25 * height)).float()
    hy, hx = geometry["hand"]
    hand = (((yy - hy) ** 2 + (xx - hx) ** 2) < (0.12 * height) ** 2).float()
    x = x + torso * (eroded - x)
    x = x + hand * (dilated - x)
    x = _gaussian_blur(x, 1.0)
    rng = np.random.default_rng([seed, 4, index])
    # false positive: a blob on the background that a segmenter mistakes for the subject
    by, bx = 0.22 * height, 0.14 * width
    sigma = 0.035 * height
    blob = torch.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma * sigma))
    x = torch.maximum(x, (0.65 + 0.1 * math.sin(index)) * blob)
    # flicker: a small error, new in every frame, where the prior is uncertain
    flicker = torch.from_numpy(rng.normal(0.0, 0.03, (1, 1, h, w)).astype(np.float32))
    x = x + flicker * (4 * x * (1 - x))
    return x.clamp(0, 1)[0, 0].numpy().astype(np.float32)


# --------------------------------------------------------------------------- frames

def make_frame_linear(index: int, size: tuple[int, int] = (1920, 1080), seed: int = 0,
                      frames: int = DEFAULT_FRAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plate linear (H, W, 3), alpha (H, W), prior (h, w)) for frame ``index`` (1-based) of a
    ``frames``-long clip; ``size`` is (width, height). The motion loops over ``frames``."""
    width, height = size
    bg = background(height, width, seed)
    premultiplied, alpha, prior_alpha, geometry = _subject(index, height, width, seed, frames)
    plate = premultiplied + (1.0 - alpha)[..., None] * bg
    prior = make_prior(prior_alpha, index, seed, geometry)
    return plate.astype(np.float32), alpha, prior


def make_frame(index: int, size: tuple[int, int] = (1920, 1080), seed: int = 0,
               frames: int = DEFAULT_FRAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plate sRGB-encoded float32 (H, W, 3) in [0, 1], exact alpha (H, W), prior (H/8, W/8))."""
    plate, alpha, prior = make_frame_linear(index, size, seed, frames)
    return srgb_encode(plate), alpha, prior


def make_trimap(alpha: np.ndarray) -> np.ndarray:
    """(H, W) uint8 trimap from an exact alpha: 128 within ``TRIMAP_RADIUS`` (scaled with the
    height) of an unknown pixel (one whose 8-bit value is neither 0 nor 255), else 0 or 255."""
    radius = max(1, round(TRIMAP_RADIUS * alpha.shape[0] / 1080))
    level = np.round(alpha * 255.0)
    unknown = torch.from_numpy(((level > 0) & (level < 255)).astype(np.float32))[None, None]
    unknown = F.max_pool2d(unknown, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0
    return np.where(unknown, 128, np.where(level >= 255, 255, 0)).astype(np.uint8)


def make_clip(frames: int = 6, size: tuple[int, int] = (640, 360), seed: int = 0):
    """Lists (plates sRGB, alphas, priors) of frames 1..``frames``."""
    out = [make_frame(i, size, seed, frames) for i in range(1, frames + 1)]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


# --------------------------------------------------------------------------- CLI

def _write_rgb(path: str, pixels: np.ndarray) -> None:
    import OpenImageIO as oiio

    kind = oiio.UINT8 if pixels.dtype == np.uint8 else oiio.FLOAT
    out = oiio.ImageOutput.create(path)
    if out is None:
        raise OSError(f"cannot write '{path}': {oiio.geterror()}")
    spec = oiio.ImageSpec(pixels.shape[1], pixels.shape[0], pixels.shape[2], kind)
    if kind == oiio.FLOAT:
        spec.attribute("compression", "zip")
    else:
        spec.attribute("png:compressionLevel", 3)
    ok = out.open(path, spec) and out.write_image(np.ascontiguousarray(pixels))
    out.close()
    if not ok:
        raise OSError(f"cannot write '{path}': {out.geterror()}")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got '{text}'") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError("size must be at least 16x16")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for plate.%%04d.png, alpha.%%04d.exr, prior.%%04d.exr, "
                                        "trimap.%%04d.png and clean.png")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                        help=f"frames 1..N (default {DEFAULT_FRAMES}); the motion loops over them")
    parser.add_argument("--size", type=_parse_size, default=(1920, 1080), help="WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--seed", type=int, default=0, help="background, strands and prior errors (default 0)")
    parser.add_argument("--plate", choices=("png", "exr"), default="png",
                        help="png: 8-bit sRGB (default); exr: float scene-linear")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from sparsemat.engine.imageio import write_alpha

    def write_plate(name: str, linear: np.ndarray) -> None:
        path = os.path.join(args.out_dir, f"{name}.{args.plate}")
        _write_rgb(path, np.round(srgb_encode(linear) * 255.0).astype(np.uint8) if args.plate == "png" else linear)

    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    write_plate("clean", np.asarray(background(args.size[1], args.size[0], args.seed)))
    for index in range(1, args.frames + 1):
        plate, alpha, prior = make_frame_linear(index, args.size, args.seed, args.frames)
        write_plate(f"plate.{index:04d}", plate)
        write_alpha(os.path.join(args.out_dir, f"alpha.{index:04d}.exr"), alpha)
        write_alpha(os.path.join(args.out_dir, f"prior.{index:04d}.exr"), prior)
        _write_rgb(os.path.join(args.out_dir, f"trimap.{index:04d}.png"), make_trimap(alpha)[..., None])
    elapsed = time.perf_counter() - start
    print(f"{args.frames} frames of {args.size[0]}x{args.size[1]} in {args.out_dir} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
