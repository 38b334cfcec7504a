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

With a trimap (ours, not the published code's): the band is the trimap's unknown region
(optionally dilated), the refine mask never leaves it, and its known pixels are exactly 0 or 1
in the output.
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


@dataclass(frozen=True)
class Trimap:
    """A trimap at a frame's size: 0 is known background, 1 known foreground, anything between
    unknown. Its unknown region, dilated by ``dilation`` pixels on each side (into the known
    regions, which shrink accordingly), is the band; its known pixels are fixed in the output."""

    foreground: torch.Tensor  # bool (1, 1, H, W): alpha exactly 1
    background: torch.Tensor  # bool: alpha exactly 0
    unknown: torch.Tensor  # float 0/1: the band

    @classmethod
    def at_size(cls, values: torch.Tensor, size: tuple[int, int], dilation: int = 0) -> "Trimap":
        """``values`` (h, w) at any resolution of the frame's aspect, resized to ``size`` by the
        nearest pixel (centre-aligned: a trimap's values must not blend into new ones)."""
        values = F.interpolate(values[None, None].float(), size=size, mode="nearest-exact")
        foreground, background = values >= 1.0, values <= 0.0
        unknown = (~(foreground | background)).float()
        if dilation > 0:
            unknown = dilate(unknown, 2 * dilation + 1)
            known = unknown == 0
            foreground, background = foreground & known, background & known
        return cls(foreground, background, unknown)

    def at_scale(self, size: tuple[int, int]) -> torch.Tensor:
        """The band at another size (the cascade's reduced scales), by the nearest pixel."""
        return F.interpolate(self.unknown, size=size, mode="nearest-exact")

    def fix(self, alpha: torch.Tensor) -> torch.Tensor:
        """``alpha`` with the known pixels set: 1 in the foreground, 0 in the background."""
        return alpha.masked_fill(self.foreground, 1.0).masked_fill(self.background, 0.0)


def sparsity_masks(prior: torch.Tensor, frame: torch.Tensor, previous: torch.Tensor | None,
                   trimap: Trimap | None = None) -> Masks:
    band = spatial_band(prior) if trimap is None else trimap.unknown
    if previous is None:
        return Masks(band, band, None, None)
    shared, changed = temporal_change(frame, previous)
    refine = dilate(band * changed)
    return Masks(refine if trimap is None else refine * band, band, changed, shared)


def compose(refined: torch.Tensor, masks: Masks, prior: torch.Tensor,
            previous_alpha: torch.Tensor | None, trimap: Trimap | None = None) -> torch.Tensor:
    """Refined alpha inside the mask; outside it the previous alpha where shared, else the prior;
    a trimap's known pixels exact whatever the rest says."""
    outside = prior
    if previous_alpha is not None and masks.shared is not None:
        outside = torch.where(masks.shared, previous_alpha, prior)
    alpha = torch.where(masks.refine > 0, refined, outside)
    return alpha if trimap is None else trimap.fix(alpha)
