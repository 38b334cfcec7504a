"""Training the sparse refiner: one patch's loss as the published recipe computes it, and a step.

The prior network is frozen: its alpha and context are computed without gradients, on the
*view* it would see (a 512-px copy of the image or of its crop). The refiner runs on the sites
of a patch's unknown band with its side outputs, and ``losses.refiner_loss`` compares them,
scattered to their levels, with the label. A ``Patch`` carries everything the refiner reads, so
a batch of them can come from a dataset (``published_patch``) or from a shot's keyframes
(``whole_frame`` then ``crop``) alike.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .losses import refiner_loss
from .matting import normalize, site_inputs
from .model import SparseMat
from .model.backends import TorchPlan
from .sparsity import spatial_band
from .validation import prior_input_size


# Fewer band pixels than this may leave a single site at the deepest level, where batch norm in
# training mode cannot normalise; such patches are skipped (at most 64 pixels share a 1/8 site).
MIN_BAND_PIXELS = 256


@dataclass(frozen=True)
class Patch:
    """What the refiner trains on: ``image`` (H, W, 3) in [0, 1], display-encoded; ``alpha``,
    ``band`` (0/1) and ``prior`` (H, W); the prior network's ``context`` of its view and
    ``context_prior`` (1, 1, h, w), the prior over that same view, which the context attention
    pools with; optional ``foreground`` and ``background`` (H, W, 3) for the composition term."""

    image: torch.Tensor
    alpha: torch.Tensor
    band: torch.Tensor
    prior: torch.Tensor
    context: torch.Tensor
    context_prior: torch.Tensor
    foreground: torch.Tensor | None = None
    background: torch.Tensor | None = None


def trainable(patch: Patch) -> bool:
    return int(torch.count_nonzero(patch.band)) >= MIN_BAND_PIXELS


def freeze_prior(model: SparseMat) -> None:
    """The recipe's training mode: the prior network frozen in evaluation mode, the refiner's
    batch norm in training mode."""
    model.lpn.requires_grad_(False)
    model.lpn.eval()
    model.shm.train()


def refiner_optimiser(model: SparseMat, learning_rate: float, betas: tuple[float, float]) -> torch.optim.Adam:
    return torch.optim.Adam(model.shm.parameters(), lr=learning_rate, betas=betas)


def set_learning_rate(optimiser: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = learning_rate


@torch.no_grad()
def prior_of_view(model: SparseMat, view_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen prior network on ``view_rgb`` (h, w, 3), resized as inference resizes a frame:
    its alpha (1, 1, h', w') and context."""
    image = normalize(view_rgb)
    small = F.interpolate(image, size=prior_input_size(*view_rgb.shape[:2]), mode="bilinear", align_corners=False)
    return model.lpn(small)


def crop_resize(x: torch.Tensor, box: tuple[float, float, float, float], size: tuple[int, int]) -> torch.Tensor:
    """The region ``box`` (x1, y1, x2, y2, fractions of ``x``'s width and height) of ``x`` (1, C, h, w),
    sampled bilinearly at the pixel centres of a (1, C, *size) patch."""
    x1, y1, x2, y2 = box
    theta = x.new_tensor([[[x2 - x1, 0.0, x1 + x2 - 1.0], [0.0, y2 - y1, y1 + y2 - 1.0]]])
    grid = F.affine_grid(theta, [1, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def patch_in_view(model: SparseMat, view_rgb: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor,
                  band: torch.Tensor, box: tuple[float, float, float, float], foreground: torch.Tensor | None = None,
                  background: torch.Tensor | None = None) -> Patch:
    """A dataset patch as the published recipe makes it: the prior network sees ``view_rgb``, and
    the patch (``image``, ``alpha``, ``band``, at full resolution) covers ``box`` of that view,
    whose prior is sampled over it."""
    prior_lr, context = prior_of_view(model, view_rgb)
    prior = crop_resize(prior_lr, box, tuple(alpha.shape))[0, 0]
    return Patch(image, alpha, band, prior, context, prior_lr, foreground, background)


def whole_frame(model: SparseMat, frame_rgb: torch.Tensor, alpha: torch.Tensor,
                prior: torch.Tensor | None = None) -> Patch:
    """A whole frame as inference sees it: the prior network on the frame's 512-px copy, the
    prior (the network's, or a given coarse ``prior`` (h, w) at any resolution) resized to the frame,
    and the band inference would refine in it (the prior's dilated uncertain band)."""
    prior_lr, context = prior_of_view(model, frame_rgb)
    if prior is not None:
        prior_lr = prior.clamp(0, 1)[None, None].to(frame_rgb)
    full = F.interpolate(prior_lr, size=tuple(frame_rgb.shape[:2]), mode="bilinear", align_corners=False)
    return Patch(frame_rgb, alpha, spatial_band(full)[0, 0], full[0, 0], context, full)


def crop(patch: Patch, top: int, left: int, size: int, flip: bool = False) -> Patch:
    """A square of ``size`` pixels of ``patch`` (its context unchanged: the attention pools it
    over the whole view), mirrored left to right when ``flip``."""
    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        x = x[top:top + size, left:left + size]
        return x.flip(1) if flip else x

    return replace(patch, image=cut(patch.image), alpha=cut(patch.alpha), band=cut(patch.band),
                   prior=cut(patch.prior), foreground=cut(patch.foreground), background=cut(patch.background))


def patch_loss(model: SparseMat, patch: Patch) -> torch.Tensor:
    """The recipe's loss on one patch. ValueError for an alpha of another size or an empty band:
    nothing would train."""
    height, width = patch.image.shape[:2]
    for name in ("alpha", "band", "prior"):
        if tuple(getattr(patch, name).shape) != (height, width):
            raise ValueError(f"the {name} is {tuple(getattr(patch, name).shape)}, the image {height}x{width}: "
                             f"they must be the image's size")
    mask = patch.band > 0
    if not mask.any():
        raise ValueError("the patch's unknown band is empty: its alpha has no edge to learn from")
    image = normalize(patch.image)
    prior = patch.prior[None, None]
    plan = TorchPlan(mask, model.shm.rules)
    alpha_sites, sides = model.shm(site_inputs(image, prior, plan.sites), plan, patch.context, patch.context_prior,
                                   side_outputs=True)
    outputs = [plan.levels[level].scatter(values)[None, None] for level, values in zip((2, 1, 0), sides)]
    outputs.append(plan.sites.scatter(alpha_sites)[None, None])
    return refiner_loss(outputs, patch.alpha[None, None], patch.band[None, None].float(), channels_first(patch.image),
                        channels_first(patch.foreground), channels_first(patch.background))


def train_step(model: SparseMat, optimiser: torch.optim.Optimizer, patches: list[Patch]) -> float:
    """One optimiser step on the mean loss of ``patches`` (the batch); the loss before the step."""
    optimiser.zero_grad(set_to_none=True)
    total = 0.0
    for patch in patches:  # one backward a patch: only one patch's activations are held at a time
        loss = patch_loss(model, patch) / len(patches)
        loss.backward()
        total += loss.item()
    optimiser.step()
    return total


def channels_first(rgb: torch.Tensor | None) -> torch.Tensor | None:
    return None if rgb is None else rgb.permute(2, 0, 1)[None]
