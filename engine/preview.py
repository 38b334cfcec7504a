"""``sparsemat preview``: a PNG contact sheet of one frame, for people who would rather look.

Four tiles, left to right: the plate; the alpha; the plate composited over a
checkerboard with the alpha; the plate dimmed, with the refined band in red and,
when a previous frame exists, the changed (temporal) pixels in blue.
"""
from __future__ import annotations

import numpy as np

CHECKER = 16  # checkerboard square, in tile pixels


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(height, width), mode="area")[0]
    return out[0].numpy() if image.ndim == 2 else out.permute(1, 2, 0).numpy()


def contact_sheet(plate: np.ndarray, alpha: np.ndarray, band: np.ndarray, changed: np.ndarray | None,
                  tile_width: int = 480) -> np.ndarray:
    """uint8 (h, 4 w, 3) sheet from sRGB ``plate`` (H, W, 3), ``alpha`` (H, W) and boolean masks (H, W)."""
    height = max(1, round(plate.shape[0] * tile_width / plate.shape[1]))
    small = _resize(plate, height, tile_width)
    matte = _resize(alpha, height, tile_width)[..., None]
    y, x = np.mgrid[0:height, 0:tile_width]
    checker = np.where(((y // CHECKER) + (x // CHECKER)) % 2 == 0, 0.8, 0.5)[..., None]
    overlay = small * 0.4
    overlay[..., 0] += 0.6 * _resize(band.astype(np.float32), height, tile_width)
    if changed is not None:
        overlay[..., 2] += 0.6 * _resize(changed.astype(np.float32), height, tile_width)
    tiles = [small, np.repeat(matte, 3, axis=2), matte * small + (1 - matte) * checker, overlay]
    return np.round(np.clip(np.concatenate(tiles, axis=1), 0, 1) * 255).astype(np.uint8)
