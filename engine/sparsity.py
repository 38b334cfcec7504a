"""Which pixels the sparse refiner works on, and how the rest of the frame is filled.

These are the published SparseMat inference rules (CVPR 2023), on (1, 1, H, W) tensors:

- spatial band: the upsampled prior's uncertain pixels (0.01 < alpha < 0.99), dilated 15 x 15;
- temporal change: ``diff`` is the channel mean of |current - previous| on the normalized
  input; a pixel is *shared* (may reuse the previous alpha) when the 9 x 9 box sum of
  ``diff`` is under 0.05 and its own ``diff`` under 0.001; the changed mask is the
  15 x 15 dilation of not-shared;
- refine mask: the dilation of band * changed (the band alone without a previous frame);
- composition: refined alpha inside the mask; outside it, shared pixels keep the previous
  alpha and the others take the upsampled prior.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BAND_LOW, BAND_HIGH = 0.01, 0.99
DILATION = 15
BOX = 9
BOX_SUM_LIMIT = 0.05
PIXEL_DIFF_LIMIT = 0.001


def valid_window_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """size x size sums over the windows that fit in the last two dims (the output is size - 1
    smaller in each), by a cumulative sum along each axis: a few passes a pixel whatever the
    size (pooling and convolution kernels cost 2 * size and were the slowest full-frame work
    here). Exact for integer input; pass float64 for real values."""
    for dim in (-2, -1):
        total = x.cumsum(dim)
        length = total.shape[dim] - size + 1
        x = total.narrow(dim, size - 1, length).clone()
        x.narrow(dim, 1, length - 1).sub_(total.narrow(dim, 0, length - 1))
    return x


def window_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """size x size sums centred on each pixel, with zero padding: the same size as ``x``."""
    pad = size // 2
    return valid_window_sum(F.pad(x, (pad, size - pad - 1, pad, size - pad - 1)), size)


def dilate(mask: torch.Tensor, size: int = DILATION) -> torch.Tensor:
    """size x size max filter of a 0/1 mask (a pixel is set when any pixel of its window is)."""
    return (window_sum(mask.to(torch.int32), size) > 0).to(mask.dtype)


def box_sum(x: torch.Tensor, size: int = BOX) -> torch.Tensor:
    """size x size sum with zero padding, in float64 so that thresholds on it do not drift."""
    return window_sum(x.double(), size)


def spatial_band(prior: torch.Tensor) -> torch.Tensor:
    return dilate(((prior > BAND_LOW) & (prior < BAND_HIGH)).float())


@dataclass(frozen=True)
class Masks:
    refine: torch.Tensor  # float 0/1: pixels the sparse refiner computes
    band: torch.Tensor  # float 0/1: dilated uncertain band of the prior
    changed: torch.Tensor | None  # float 0/1: dilated not-shared pixels (None without a previous frame)
    shared: torch.Tensor | None  # bool: pixels that may keep the previous alpha


def temporal_change(frame: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shared, changed) between two normalized frames of the same size."""
    diff = (frame - previous).abs().mean(dim=1, keepdim=True)
    shared = (box_sum(diff) < BOX_SUM_LIMIT) & (diff < PIXEL_DIFF_LIMIT)
    return shared, dilate((~shared).float())


def sparsity_masks(prior: torch.Tensor, frame: torch.Tensor, previous: torch.Tensor | None) -> Masks:
    band = spatial_band(prior)
    if previous is None:
        return Masks(band, band, None, None)
    shared, changed = temporal_change(frame, previous)
    return Masks(dilate(band * changed), band, changed, shared)


def compose(refined: torch.Tensor, masks: Masks, prior: torch.Tensor,
            previous_alpha: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Refined alpha inside the mask; outside it the previous alpha where shared, else the prior.
    ``out`` (the result's shape) may be ``previous_alpha`` itself: that is read in full first."""
    outside = prior
    if previous_alpha is not None and masks.shared is not None:
        outside = torch.where(masks.shared, previous_alpha, prior)
    return torch.where(masks.refine > 0, refined, outside, out=out)
