"""Matting error metrics on alpha in [0, 1], in their standard benchmark definitions.

SAD, MSE, gradient and connectivity errors follow Rhemann et al. 2009 (alphamatting.com) as
implemented by the Deep Image Matting evaluation code (the MATLAB original and its Python ports
in GCA-Matting / MatteFormer / ViTMatte); dtSSD follows Erofeev et al. 2015 (videomatting.com),
as computed by the video matting literature (e.g. RVM's evaluation). Every function returns the
RAW value; benchmark tables report them scaled, by the factors in ``SCALING``.

A ``mask`` (boolean, True = evaluated) restricts the *sum* (or mean) to those pixels; filters and
connected components always see the whole frame, as in the benchmark code, where the mask is the
trimap's unknown region (``unknown_region``).

Notes on choices where the published implementations differ:

* Connectivity sums |phi(pred) - phi(gt)| (Rhemann's p = 1, as every implementation does).
* The source region at each level is the largest 4-connected component of the *foreground*
  (pixels where both alphas reach the level), as in the MATLAB original (``bwconncomp``). Several
  Python ports pick ``argmax(bincount(labels))``, which counts the background as a component.
  A level with no foreground disconnects every pixel still connected (its level is the previous
  one), as the definition says.
* Levels are exact decimals (0, 0.1, ..., 1.0), so alpha 0.6 reaches level 0.6 (with
  ``np.arange`` it does not: its 7th value is 0.6000000000000001), and they are compared, and
  the distances to them computed, at the matte's own precision: a float32 matte's pixel of
  exactly float32(0.9) reaches level 0.9 (against the float64 level it would not: 0.89999998).
* Alpha is used as given unless a convention says otherwise (``CONVENTIONS``): the MATLAB
  gradient code rescales each matte to its own min-max with ``mat2gray``, which is the same
  whenever the matte spans 0 to 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Reported value = raw value * factor; the labels say the same thing for table headers.
SCALING = {"sad": 1e-3, "mse": 1e3, "grad": 1e-3, "conn": 1e-3, "dtssd": 1e2}
SCALING_LABELS = {"sad": "SAD/1e3", "mse": "MSE x1e3", "grad": "Grad/1e3", "conn": "Conn/1e3", "dtssd": "dtSSD x1e2"}

GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_MIN_DISTANCE = 0.15  # phi ignores distances below this


def unknown_region(trimap: np.ndarray) -> np.ndarray:
    """Boolean mask of a trimap's unknown pixels: values strictly between 0 and 1."""
    trimap = np.asarray(trimap)
    return (trimap > 0) & (trimap < 1)


def unknown_128(trimap: np.ndarray) -> np.ndarray:
    """The Deep Image Matting code's unknown region: only pixels of value 128 (of 255), not the
    grey of a resampled trimap's borders."""
    return np.round(np.asarray(trimap, dtype=np.float64) * 255.0) == 128


@dataclass(frozen=True)
class Convention:
    """How one benchmark's code computes its table, so ``sparsemat eval`` can give its numbers.

    ``names``: the metrics it reports, in order ("mad" is the mean absolute difference where
    the others report SAD); ``unknown``: the trimap's evaluated region, or None when the code
    evaluates whole frames; ``stretch``: each matte rescaled to its own min-max before the
    gradient; ``float32``: 8- and 16-bit files divided in float32 (``k / 255.0`` on a float32
    array) and every connectivity step done in float32, as numpy code does, instead of exact
    float64 values (``double(k) / 255``, MATLAB's); ``first_frame_dtssd``: the clip's dtSSD
    mean counts a 0 for its first frame."""

    name: str
    reproduces: str
    names: tuple[str, ...]
    scaling: dict
    labels: dict
    unknown: Callable[[np.ndarray], np.ndarray] | None = unknown_region
    stretch: bool = False
    float32: bool = False
    first_frame_dtssd: bool = False


CONVENTIONS = {
    "ours": Convention(
        "ours", "the standard definitions with exact levels and each file's own precision (see docs/QUALITY.md)",
        ("sad", "mse", "grad", "conn", "dtssd"), SCALING, SCALING_LABELS),
    "dim": Convention(
        "dim", "the Deep Image Matting / Composition-1k MATLAB code (unknown = 128 only, mat2gray before the gradient)",
        ("sad", "mse", "grad", "conn"), {"sad": 1e-3, "mse": 1.0, "grad": 1e-3, "conn": 1e-3},
        {"sad": "SAD/1e3", "mse": "MSE", "grad": "Grad/1e3", "conn": "Conn/1e3"}, unknown=unknown_128, stretch=True),
    "rvm": Convention(
        "rvm", "RobustVideoMatting's evaluate_lr.py (full frames, MAD x1e3, mattes normalized for the gradient, "
        "float32, dtSSD counting 0 for each clip's first frame)",
        ("mad", "mse", "grad", "conn", "dtssd"), {"mad": 1e3, "mse": 1e3, "grad": 1e-3, "conn": 1e-3, "dtssd": 1e2},
        {"mad": "MAD x1e3", "mse": "MSE x1e3", "grad": "Grad/1e3", "conn": "Conn/1e3", "dtssd": "dtSSD x1e2"},
        unknown=None, stretch=True, float32=True, first_frame_dtssd=True),
}


def sad(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sum of absolute differences (raw; benchmarks report it /1000)."""
    pred, gt, mask = _prepare(pred, gt, mask)
    return float(_masked_sum(np.abs(pred - gt), mask))


def mad(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference over the evaluated pixels (raw; RVM reports it x1000)."""
    pred, gt, mask = _prepare(pred, gt, mask)
    count = pred.size if mask is None else int(mask.sum())
    return float(_masked_sum(np.abs(pred - gt), mask) / count) if count else 0.0


def mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over the evaluated pixels (raw; benchmarks report it x1000).
    An empty mask gives 0, as the benchmark code's ``/ (count + 1e-8)`` does."""
    pred, gt, mask = _prepare(pred, gt, mask)
    count = pred.size if mask is None else int(mask.sum())
    return float(_masked_sum((pred - gt) ** 2, mask) / count) if count else 0.0


def gradient_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                   sigma: float = GRADIENT_SIGMA, stretch: bool = False) -> float:
    """Sum of (|grad pred| - |grad gt|)^2, gradients from normalized first-order
    Gaussian-derivative filters (``gauss_gradient``); raw, benchmarks report it /1000.
    ``stretch``: each matte is first rescaled to span 0 to 1 (MATLAB's ``mat2gray``; a constant
    matte becomes 0)."""
    pred, gt, mask = _prepare(pred, gt, mask)
    if stretch:
        pred, gt = _stretched(pred), _stretched(gt)
    pred_x, pred_y = gauss_gradient(pred, sigma)
    gt_x, gt_y = gauss_gradient(gt, sigma)
    error = (np.sqrt(pred_x**2 + pred_y**2) - np.sqrt(gt_x**2 + gt_y**2)) ** 2
    return float(_masked_sum(error, mask))


def connectivity_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                       step: float = CONNECTIVITY_STEP) -> float:
    """Sum of |phi(pred) - phi(gt)|, phi = 1 - d * (d >= 0.15), d = alpha - l, where l is the
    last level (0, step, ..., 1) at which the pixel belonged to the largest 4-connected
    component of pixels where both alphas reach the level; raw, benchmarks report it /1000."""
    pred, gt, mask = _prepare(pred, gt, mask, keep_float32=True)
    levels = _levels(step).astype(pred.dtype)  # compared at the matte's own precision
    joint = np.minimum(pred, gt)
    level_map = np.ones(pred.shape, dtype=pred.dtype)  # pixels connected at every level keep l = 1
    connected = np.ones(pred.shape, dtype=bool)  # still connected at all levels so far
    for previous, level in zip(levels[:-1], levels[1:]):
        foreground = joint >= level
        if (foreground & connected).any():
            connected_now = connected & _largest_component_in_box(foreground)
        else:  # the labelling cannot change anything: all still-connected pixels drop out
            connected_now = np.zeros_like(connected)
        level_map[connected & ~connected_now] = previous
        connected = connected_now
        if not connected.any():
            break
    error = np.abs(_phi(pred - level_map) - _phi(gt - level_map))
    return float(_masked_sum(error, mask))


def dtssd_frame(pred: np.ndarray, pred_prev: np.ndarray, gt: np.ndarray, gt_prev: np.ndarray,
                mask: np.ndarray | None = None) -> float:
    """One frame's dtSSD term: sqrt(mean over pixels of ((pred - pred_prev) - (gt - gt_prev))^2),
    the mean taken over the evaluated pixels (0 for an empty mask); raw, reported x100."""
    pred, gt, mask = _prepare(pred, gt, mask)
    pred_prev, gt_prev, _ = _prepare(pred_prev, gt_prev, None)
    if pred_prev.shape != pred.shape:
        raise ValueError(f"previous frame is {pred_prev.shape}, current frame {pred.shape}")
    difference = (pred - pred_prev) - (gt - gt_prev)
    count = difference.size if mask is None else int(mask.sum())
    return math.sqrt(_masked_sum(difference**2, mask) / count) if count else 0.0


def dtssd(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
          masks: Sequence[np.ndarray | None] | None = None, first_frame: bool = False) -> float:
    """dtSSD of a clip (Erofeev et al. 2015): ``dtssd_frame`` of frames 1..T-1 against their
    predecessors, averaged; frame t's term uses ``masks[t]``; ``first_frame``: a 0 is averaged in
    for frame 0 (RVM's code). Raw; benchmarks report it x100."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted frames but {len(gts)} ground-truth frames")
    if masks is not None and len(masks) != len(preds):
        raise ValueError(f"{len(masks)} masks for {len(preds)} frames")
    if len(preds) < 2:
        raise ValueError("dtSSD needs at least two frames")
    terms = [dtssd_frame(preds[t], preds[t - 1], gts[t], gts[t - 1], None if masks is None else masks[t])
             for t in range(1, len(preds))]
    return float(np.mean(([0.0] if first_frame else []) + terms))


def gauss_kernels(sigma: float = GRADIENT_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D factors of the benchmark's ``gaussgradient`` filter: hx[i, j] = g[i] * dg[j],
    normalized so that hx has unit Frobenius norm (half-size from sigma with epsilon 1e-2)."""
    epsilon = 1e-2
    half = int(math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dg = -u * g / sigma**2
    # ||outer(g, dg)||_F = ||g|| * ||dg||
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def gauss_gradient(image: np.ndarray, sigma: float = GRADIENT_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy): the image convolved with hx (derivative along x) and hy = hx^T, borders
    replicated, as ``scipy.ndimage.convolve(mode='nearest')`` / MATLAB ``imfilter(...,
    'replicate', 'conv')`` do; computed separably in float64."""
    image = np.asarray(image, dtype=np.float64)
    g, dg = gauss_kernels(sigma)
    return _separable(image, g, dg), _separable(image, dg, g)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected component of ``mask`` (all False if it is empty).
    Ties go to the component met first in row-major order."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    # Horizontal runs are the nodes; vertically overlapping runs of adjacent rows are the edges.
    # A row's steps from 0 to 1 and back are its runs' starts and ends, alternating in row-major
    # order: one nonzero finds both.
    framed = np.zeros((height, width + 2), dtype=np.int8)
    framed[:, 1:-1] = mask
    rows, columns = np.nonzero(np.diff(framed, axis=1))
    rows, starts, ends = rows[0::2], columns[0::2], columns[1::2]
    if rows.size == 0:
        return np.zeros_like(mask)
    roots = _component_roots(rows, starts, ends, width)
    sizes = np.bincount(roots, weights=(ends - starts).astype(np.float64), minlength=rows.size)
    chosen = roots == int(np.argmax(sizes))  # roots are each component's first run
    # Paint the chosen runs: +1 at each start, -1 just past each end, then a running sum.
    stride = width + 1
    paint = np.zeros(height * stride, dtype=np.int8)
    paint[rows[chosen] * stride + starts[chosen]] = 1
    paint[rows[chosen] * stride + ends[chosen]] = -1  # never a start: runs are maximal
    return np.cumsum(paint.reshape(height, stride), axis=1, dtype=np.int8)[:, :width].astype(bool)


def _largest_component_in_box(mask: np.ndarray) -> np.ndarray:
    """``largest_component``, labelled only inside the bounding box of ``mask`` (the high levels
    of a matte are a subject's interior, a small part of the frame): the same result."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    out = np.zeros_like(mask)
    box = slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)
    out[box] = largest_component(mask[box])
    return out


def _component_roots(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Per run, the index of the first run (row-major) of its 4-connected component."""
    count = rows.size
    stride = width + 1
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    # Runs of row r - 1 overlapping run j of row r: end > start_j and start < end_j. Within a row
    # runs are sorted and disjoint, so they form the index range [low, high).
    above = (rows - 1) * stride
    low = np.searchsorted(end_keys, above + starts, side="right")
    high = np.searchsorted(start_keys, above + ends, side="left")
    degree = np.maximum(high - low, 0)
    total = int(degree.sum())
    u = np.repeat(np.arange(count), degree)
    v = np.repeat(low, degree) + (np.arange(total) - np.repeat(np.cumsum(degree) - degree, degree))
    # Min-label union-find in vectorized rounds: hook the larger root of every edge onto the
    # smaller one (parent <= index throughout, so no cycles), then compress to stars.
    parent = np.arange(count)
    while u.size:
        root_u, root_v = parent[u], parent[v]
        apart = root_u != root_v
        if not apart.any():
            break
        u, v, root_u, root_v = u[apart], v[apart], root_u[apart], root_v[apart]
        np.minimum.at(parent, np.maximum(root_u, root_v), np.minimum(root_u, root_v))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


TILE_ROWS = 64  # rows filtered at a time: both passes of a tile stay in the CPU's cache


def _separable(image: np.ndarray, column_kernel: np.ndarray, row_kernel: np.ndarray) -> np.ndarray:
    """True convolution with outer(column_kernel, row_kernel), borders replicated; the output has
    the input's shape. Row tiles at a time (4x faster at 1080p than whole-frame passes, which
    were bound by memory, with the same values)."""
    half = column_kernel.size // 2
    height, width = image.shape
    padded = np.pad(image, half, mode="edge")
    out = np.empty_like(image)
    for top in range(0, height, TILE_ROWS):
        rows = min(TILE_ROWS, height - top)
        columns = _convolve1d(padded[top:top + rows + 2 * half], column_kernel, 0, rows)
        out[top:top + rows] = _convolve1d(columns, row_kernel, 1, width)
    return out


def _convolve1d(padded: np.ndarray, kernel: np.ndarray, axis: int, length: int) -> np.ndarray:
    """True convolution along ``axis`` of an array padded by half the kernel on that axis: the
    ``length`` outputs. The Gaussian is symmetric and its derivative antisymmetric: pairs of taps
    share one product (half the passes of the plain sum, the same values to float rounding)."""
    half = kernel.size // 2

    def shifted(offset: int) -> np.ndarray:  # padded[n + offset] for every output n
        return padded[offset : offset + length] if axis == 0 else padded[:, offset : offset + length]

    symmetric = np.array_equal(kernel, kernel[::-1])
    if not symmetric and not np.array_equal(kernel, -kernel[::-1]):
        raise ValueError("the kernel must be symmetric or antisymmetric")
    out = kernel[half] * shifted(half) if symmetric else np.zeros_like(shifted(0))
    pair = np.empty_like(out)
    for k in range(half):
        # out[n] = sum_k kernel[k] * image[n - (k - half)]: taps k and 2 half - k meet at offsets
        # 2 half - k and k, with kernel[2 half - k] = +-kernel[k].
        (np.add if symmetric else np.subtract)(shifted(2 * half - k), shifted(k), out=pair)
        pair *= kernel[k]
        out += pair
    return out


def _levels(step: float) -> np.ndarray:
    """0, step, 2 step, ... <= 1 (MATLAB's 0:step:1), each the nearest double to its decimal."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    count = int(math.floor(1 / step + 1e-9)) + 1
    return np.round(np.arange(count) * step, 12)


def _phi(distance: np.ndarray) -> np.ndarray:
    return 1 - distance * (distance >= CONNECTIVITY_MIN_DISTANCE)


def _stretched(alpha: np.ndarray) -> np.ndarray:
    low, high = float(alpha.min()), float(alpha.max())
    return (alpha - low) / (high - low) if high > low else np.zeros_like(alpha)


def _masked_sum(values: np.ndarray, mask: np.ndarray | None) -> float:
    return float(values.sum() if mask is None else values[mask].sum())


def _prepare(pred, gt, mask, keep_float32: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """float64 arrays (float32 ones stay float32 with ``keep_float32``, when both are), checked."""
    both32 = keep_float32 and np.asarray(pred).dtype == np.float32 and np.asarray(gt).dtype == np.float32
    pred = np.asarray(pred, dtype=np.float32 if both32 else np.float64)
    gt = np.asarray(gt, dtype=np.float32 if both32 else np.float64)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"alpha must be 2-D (H, W), got shapes {pred.shape} and {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {pred.shape} but ground truth is {gt.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise ValueError("mask must be boolean (True = evaluated); for a trimap use unknown_region(trimap)")
        if mask.shape != pred.shape:
            raise ValueError(f"mask is {mask.shape} but alpha is {pred.shape}")
    return pred, gt, mask
