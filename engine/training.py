"""One training sample's loss for the sparse refiner, as the published recipe computes it.

The prior network is frozen: its alpha and context are computed without gradients. The refiner
runs on the sites of the sample's unknown band (``losses.random_unknown_band``) with its side
outputs, and ``losses.refiner_loss`` compares them, scattered to their levels, with the label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import refiner_loss
from .matting import normalize, site_inputs
from .model import SparseMat
from .model.backends import TorchPlan
from .model.lpn import resize_like
from .validation import prior_input_size


def sample_loss(model: SparseMat, frame_rgb: torch.Tensor, alpha: torch.Tensor, band: torch.Tensor,
                foreground: torch.Tensor | None = None, background: torch.Tensor | None = None) -> torch.Tensor:
    """The recipe's loss on one sample: ``frame_rgb`` (H, W, 3) in [0, 1], display-encoded;
    ``alpha`` and ``band`` (H, W); optional ``foreground`` and ``background`` (H, W, 3) as the
    frame is, for the composition term. ValueError for an empty band: nothing would train."""
    height, width = frame_rgb.shape[:2]
    if alpha.shape != (height, width) or band.shape != (height, width):
        raise ValueError(f"the alpha is {tuple(alpha.shape)} and the band {tuple(band.shape)}, the frame "
                         f"{height}x{width}: they must be the frame's size")
    mask = band > 0
    if not mask.any():
        raise ValueError("the sample's unknown band is empty: its alpha has no edge to learn from")
    image = normalize(frame_rgb)
    with torch.no_grad():
        small = F.interpolate(image, size=prior_input_size(height, width), mode="bilinear", align_corners=False)
        prior_lr, context = model.lpn(small)
    prior = resize_like(prior_lr, image)
    plan = TorchPlan(mask, model.shm.rules)
    alpha_sites, sides = model.shm(site_inputs(image, prior, plan.sites), plan, context, prior, side_outputs=True)
    outputs = [plan.levels[level].scatter(values)[None, None] for level, values in zip((2, 1, 0), sides)]
    outputs.append(plan.sites.scatter(alpha_sites)[None, None])
    return refiner_loss(outputs, alpha[None, None], band[None, None].float(), channels_first(frame_rgb),
                        channels_first(foreground), channels_first(background))


def channels_first(rgb: torch.Tensor | None) -> torch.Tensor | None:
    return None if rgb is None else rgb.permute(2, 0, 1)[None]
