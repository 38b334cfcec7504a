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
  ``np.arange`` it does not: its 7th value is 0.6000000000000001).
* Alpha is used as given (the Python ports divide 8-bit values by 255; the MATLAB gradient code
  rescales each matte to its own min-max with ``mat2gray``, which is the same whenever the matte
  spans 0 to 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

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


def sad(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sum of absolute differences (raw; benchmarks report it /1000)."""
    pred, gt, mask = _prepare(pred, gt, mask)
    return float(_masked_sum(np.abs(pred - gt), mask))


def mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over the evaluated pixels (raw; benchmarks report it x1000).
    An empty mask gives 0, as the benchmark code's ``/ (count + 1e-8)`` does."""
    pred, gt, mask = _prepare(pred, gt, mask)
    count = pred.size if mask is None else int(mask.sum())
    return float(_masked_sum((pred - gt) ** 2, mask) / count) if count else 0.0


def gradient_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                   sigma: float = GRADIENT_SIGMA) -> float:
    """Sum of (|grad pred| - |grad gt|)^2, gradients from normalized first-order
    Gaussian-derivative filters (``gauss_gradient``); raw, benchmarks report it /1000."""
    pred, gt, mask = _prepare(pred, gt, mask)
    pred_x, pred_y = gauss_gradient(pred, sigma)
    gt_x, gt_y = gauss_gradient(gt, sigma)
    error = (np.sqrt(pred_x**2 + pred_y**2) - np.sqrt(gt_x**2 + gt_y**2)) ** 2
    return float(_masked_sum(error, mask))


def connectivity_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                       step: float = CONNECTIVITY_STEP) -> float:
    """Sum of |phi(pred) - phi(gt)|, phi = 1 - d * (d >= 0.15), d = alpha - l, where l is the
    last level (0, step, ..., 1) at which the pixel belonged to the largest 4-connected
    component of pixels where both alphas reach the level; raw, benchmarks report it /1000."""
    pred, gt, mask = _prepare(pred, gt, mask)
    levels = _levels(step)
    joint = np.minimum(pred, gt)
    level_map = np.ones(pred.shape)  # pixels connected at every level keep l = 1
    connected = np.ones(pred.shape, dtype=bool)  # still connected at all levels so far
    for previous, level in zip(levels[:-1], levels[1:]):
        foreground = joint >= level
        if (foreground & connected).any():
            connected_now = connected & largest_component(foreground)
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
          masks: Sequence[np.ndarray | None] | None = None) -> float:
    """dtSSD of a clip (Erofeev et al. 2015): ``dtssd_frame`` of frames 1..T-1 against their
    predecessors, averaged; frame t's term uses ``masks[t]``. Raw; benchmarks report it x100."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted frames but {len(gts)} ground-truth frames")
    if masks is not None and len(masks) != len(preds):
        raise ValueError(f"{len(masks)} masks for {len(preds)} frames")
    if len(preds) < 2:
        raise ValueError("dtSSD needs at least two frames")
    terms = [dtssd_frame(preds[t], preds[t - 1], gts[t], gts[t - 1], None if masks is None else masks[t])
             for t in range(1, len(preds))]
    return float(np.mean(terms))


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
    gx = _convolve1d(_convolve1d(image, g, axis=0), dg, axis=1)
    gy = _convolve1d(_convolve1d(image, dg, axis=0), g, axis=1)
    return gx, gy


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected component of ``mask`` (all False if it is empty).
    Ties go to the component met first in row-major order."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    # Horizontal runs are the nodes; vertically overlapping runs of adjacent rows are the edges.
    first = mask.copy()
    first[:, 1:] &= ~mask[:, :-1]
    last = mask.copy()
    last[:, :-1] &= ~mask[:, 1:]
    rows, starts = np.nonzero(first)
    _, lasts = np.nonzero(last)  # same row-major order: the k-th start and end are one run
    ends = lasts + 1
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


def _convolve1d(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """True convolution along ``axis`` with replicated borders; the output has the input's shape."""
    half = kernel.size // 2
    length = image.shape[axis]
    padding = [(0, 0), (0, 0)]
    padding[axis] = (half, half)
    padded = np.pad(image, padding, mode="edge")
    out = np.zeros_like(image)
    for k, weight in enumerate(kernel):
        # out[n] = sum_k kernel[k] * image[n - (k - half)] = sum_k kernel[k] * padded[n + 2 half - k]
        offset = 2 * half - k
        out += weight * (padded[offset : offset + length] if axis == 0 else padded[:, offset : offset + length])
    return out


def _levels(step: float) -> np.ndarray:
    """0, step, 2 step, ... <= 1 (MATLAB's 0:step:1), each the nearest double to its decimal."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    count = int(math.floor(1 / step + 1e-9)) + 1
    return np.round(np.arange(count) * step, 12)


def _phi(distance: np.ndarray) -> np.ndarray:
    return 1 - distance * (distance >= CONNECTIVITY_MIN_DISTANCE)


def _masked_sum(values: np.ndarray, mask: np.ndarray | None) -> float:
    return float(values.sum() if mask is None else values[mask].sum())


def _prepare(pred, gt, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
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
