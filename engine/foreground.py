"""Foreground colours for an alpha: the unmixed subject colour behind every partly transparent pixel.

A plate's pixel on hair or motion blur is ``I = alpha F + (1 - alpha) B`` in linear light;
multiplying the plate by alpha keeps the background's share of ``I`` and fringes every edge
over a new background. This solves for ``F`` (and ``B``) as the multilevel foreground
estimation of Germer et al. 2020 ("Fast Multi-Level Foreground Estimation", the method
pymatting implements), written here in torch, so that it runs on the engine's device
(pymatting is numba on the CPU only): from a 1 x 1 image up to the full size (side lengths
growing geometrically), each level starts from the previous level's ``F`` and ``B`` resized and
relaxes, for every pixel, the 2 x 2 least-squares system of the compositing equation plus
smoothness towards its four neighbours, weighted by ``REGULARIZATION + |alpha - neighbour's
alpha|`` (colours may change across alpha edges, not within flat regions). The relaxation is
red-black Gauss-Seidel (half the pixels, then the other half, each from its neighbours' newest
values), ``SMALL_ITERATIONS`` times on levels up to ``SMALL_SIZE`` on a side, ``BIG_ITERATIONS``
times above.

A frame is solved tile by tile, only where its alpha is partial (``foreground_colours``): the
cost follows the band. On the 1080p sample clip with its exact alpha this was also more
accurate than one solve of the whole frame (composite error 17.4 against 20.5 x1e-3 on
frame 5, 13.1 against 18.2 on frame 13; measured once, with a test run beside it): the
tiles' levels stay small, where each gets ten relaxations.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REGULARIZATION = 1e-5
TILE, TILE_MARGIN = 128, 32  # pixels: the band is solved tile by tile, each with this much context
SMALL_SIZE = 32
SMALL_ITERATIONS = 10
BIG_ITERATIONS = 2


def _neighbours(x: torch.Tensor) -> list[torch.Tensor]:
    """The four 4-neighbours of every pixel of (N, C, H, W), borders replicated."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    height, width = x.shape[2:]
    return [padded[:, :, 1 + dy: 1 + dy + height, 1 + dx: 1 + dx + width] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]


def _relax(image, alpha, foreground, background, weights, mask, ceiling):
    """One half-sweep: the pixels of ``mask`` solved from their neighbours' current colours."""
    a0, a1 = alpha, 1.0 - alpha
    a00, a01, a11 = a0 * a0, a0 * a1, a1 * a1
    b0, b1 = a0 * image, a1 * image
    for weight, f, b in zip(weights, _neighbours(foreground), _neighbours(background)):
        a00 = a00 + weight
        a11 = a11 + weight
        b0 = b0 + weight * f
        b1 = b1 + weight * b
    determinant = a00 * a11 - a01 * a01
    new_f = ((a11 * b0 - a01 * b1) / determinant).clamp(0.0, ceiling)
    new_b = ((a00 * b1 - a01 * b0) / determinant).clamp(0.0, ceiling)
    return torch.where(mask, new_f, foreground), torch.where(mask, new_b, background)


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) foreground colours from linear-light (N, 3, H, W) images and their (N, 1, H, W)
    alphas in [0, 1]; values stay within [0, the images' maximum]."""
    height, width = image.shape[2:]
    image, alpha = image.float(), alpha.float().clamp(0.0, 1.0)
    ceiling = max(float(image.max()), 1e-6)
    levels = max(1, math.ceil(math.log2(max(height, width))))
    foreground = background = image.mean(dim=(2, 3), keepdim=True)
    for level in range(levels + 1):
        size = (max(1, round(height ** (level / levels))), max(1, round(width ** (level / levels))))
        level_image = F.interpolate(image, size=size, mode="nearest")
        level_alpha = F.interpolate(alpha, size=size, mode="nearest")
        foreground = F.interpolate(foreground, size=size, mode="nearest")
        background = F.interpolate(background, size=size, mode="nearest")
        weights = [REGULARIZATION + (level_alpha - n).abs() for n in _neighbours(level_alpha)]
        y = torch.arange(size[0], device=image.device).view(-1, 1)
        x = torch.arange(size[1], device=image.device).view(1, -1)
        red = ((y + x) % 2 == 0)[None, None]
        for _ in range(SMALL_ITERATIONS if max(size) <= SMALL_SIZE else BIG_ITERATIONS):
            for mask in (red, ~red):
                foreground, background = _relax(level_image, level_alpha, foreground, background, weights, mask,
                                                ceiling)
    return foreground


def foreground_colours(colours: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) straight foreground colours: unmixed where 0 < alpha < 1, the plate's own linear
    ``colours`` (H, W, 3) elsewhere. Solved in ``TILE`` x ``TILE`` tiles holding such pixels,
    each with ``TILE_MARGIN`` pixels of context (borders repeated), as one batch: the cost
    follows the band, not the frame."""
    height, width = alpha.shape
    mixed = (alpha > 0) & (alpha < 1)
    rows, columns = -(-height // TILE), -(-width // TILE)
    pad = (0, columns * TILE - width, 0, rows * TILE - height)
    active = F.max_pool2d(F.pad(mixed.float()[None, None], pad), TILE)[0, 0] > 0
    corners = [(y * TILE, x * TILE) for y, x in torch.nonzero(active).tolist()]  # one synchronisation
    out = colours.float().permute(2, 0, 1).clone()
    if not corners:
        return out.permute(1, 2, 0)
    framed = (TILE_MARGIN, TILE_MARGIN + pad[1], TILE_MARGIN, TILE_MARGIN + pad[3])
    image = F.pad(out[None], framed, mode="replicate")[0]
    alphas = F.pad(alpha[None, None].float(), framed, mode="replicate")[0]
    size = TILE + 2 * TILE_MARGIN
    solved = estimate_foreground(torch.stack([image[:, y:y + size, x:x + size] for y, x in corners]),
                                 torch.stack([alphas[:, y:y + size, x:x + size] for y, x in corners]))
    for (y, x), tile in zip(corners, solved):
        h, w = min(TILE, height - y), min(TILE, width - x)
        region = out[:, y:y + h, x:x + w]
        inner = tile[:, TILE_MARGIN:TILE_MARGIN + h, TILE_MARGIN:TILE_MARGIN + w]
        region.copy_(torch.where(mixed[y:y + h, x:x + w], inner, region))
    return out.permute(1, 2, 0)


def premultiplied_foreground(colours: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(H, W, 4) premultiplied RGBA to merge over a new background: ``foreground_colours`` times
    alpha, alpha in A."""
    return torch.cat([foreground_colours(colours, alpha) * alpha[..., None], alpha[..., None]], dim=-1)
