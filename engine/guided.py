"""A weight-free refiner for the uncertain band: confidence-weighted colour guided filtering.

``refine_band(image, prior, band)`` sharpens an upsampled coarse alpha inside ``band`` using the
full-resolution image as a guide and returns the prior unchanged outside it, so it can stand in
for the sparse network wherever SparseMat composes "refined in the band, prior elsewhere".

The algorithm (pure torch, device-agnostic, no learned weights):

* Guide: the image in linear light. Plates are composited in linear light
  (``I = alpha F + (1 - alpha) B``), where the local colour-line model behind guided filtering
  and closed-form matting holds; a cubic fit of the sRGB curve (within 0.003) stands in for
  ``pow``. On the sample clip the linear guide is about 1 % better than the sRGB one.
* Model: in every window, alpha is an affine function of the colour, ``alpha = A . I + b``
  (guided image filtering, He et al. 2010, with a 3-channel guide and an ``eps`` ridge on A),
  fitted by *weighted* least squares to the current alpha. The weights are the current alpha's
  confidence, ``floor + |2 alpha - 1| ** power``: pixels it is sure of (the certain foreground
  and background around and inside the band) are the constraints, its uncertain, blurred values
  barely count. Each window thus learns from the certain pixels which colours are foreground and
  predicts the uncertain ones from their colour, instead of reproducing the prior's blur.
  Per pixel, ``A`` and ``b`` are averaged over the windows covering it (He's filter).
* Coarse to fine: passes with decreasing radii, each pass's output (inside the band; the prior
  outside) being the next pass's input and the source of its weights. Each pass is a *fast*
  guided filter (He and Sun 2015): the window statistics and ``A, b`` are computed at 1/s
  resolution (radii are in full-resolution pixels), the averaged coefficients are upsampled
  bilinearly and applied to the full-resolution guide, so edges stay at full resolution. On the
  sample clip the subsampled passes are as accurate as full-resolution ones (extra passes at
  full resolution change SAD by < 0.5 %), at a small fraction of the cost.
* The output is clamped to [0, 1], and values within ``snap`` of 0 or 1 are pushed there (a
  linear stretch of [snap, 1 - snap] onto [0, 1]), which removes the faint residue the affine
  model leaves in clean background and foreground.

Cost follows the band, not the frame. The frame is cut into ``tile`` x ``tile`` tiles and only
the tiles holding band pixels ("active") are computed at full resolution, as one batch. The
low-resolution statistics are solved in blocks covering the active tiles (batched crops with a
halo, window sums by separable cumulative sums), on canvases pooled from the bounding box of the
active tiles plus the windows' reach; the bilinear upsampling is two small matrix products per
tile. Whole-frame work is light: finding the active tiles (a max-pool of the band) and copying
the prior into the output. The statistics are accumulated in float64 (at 1/s resolution, so
cheaply; float32 where a device has no float64): with a small ``eps`` the 3 x 3 systems are
ill-conditioned (colours in a window are nearly collinear), and float32 sums made the result
depend on rounding by up to 0.04 in alpha.

The result does not depend on the tile size (to float rounding, ~1e-6): every window sees the
pixels it would see on the whole frame; windows are clipped at the frame's borders.

One module of about 400 lines: one algorithm, whose tiling, pooled canvases and solve share
one geometry (tiles, halos, steps); split, each part would need the others' invariants.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .sparsity import valid_window_sum

# (radius in full-resolution pixels, subsampling), coarse to fine, tuned on 1080p; radius /
# subsampling is the window radius at the subsampled scale and must be a whole number.
# ``default_passes`` scales them with the frame size.
PASSES = ((32, 8), (16, 8), (8, 4), (4, 4))
REFERENCE_SHORT_SIDE = 1080
EPS = 1e-5  # ridge on A: colour variance (linear light) below which a window counts as flat
CONFIDENCE_POWER = 8
CONFIDENCE_FLOOR = 0.01
SNAP = 0.05
TILE = 64
SOLVE_BLOCK = 32  # side of a solve block, in low-resolution pixels


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Cubic fit of the sRGB decoding curve (within 0.003 on [0, 1]), far cheaper than ``pow``."""
    y = x * 0.305306011
    return y.add_(0.682171111).mul_(x).add_(0.012522878).mul_(x)


def default_passes(height: int, width: int) -> tuple[tuple[int, int], ...]:
    """PASSES with radii and subsampling scaled by 2 ** round(log2(short side / 1080) / 2): as
    tuned for short sides of 540 to 2160 px, halved below (quartered below 135 px), doubled
    above 2160 (8K). Measured on the sample clip at 270p, 360p, 720p, 1080p and 2160p: the
    windows must grow with the scene's scale in pixels, but more slowly than it."""
    exponent = round(0.5 * math.log2(max(1, min(height, width)) / REFERENCE_SHORT_SIDE))
    scale = 2.0 ** exponent
    passes = []
    for radius, step in PASSES:
        new_step = max(1, int(step * scale))
        passes.append((new_step * max(1, round(radius * scale / new_step)), new_step))
    return tuple(passes)


def refine_band(image: torch.Tensor, prior: torch.Tensor, band: torch.Tensor, *,
                passes: tuple[tuple[int, int], ...] | None = None, snap: float = SNAP, tile: int = TILE
                ) -> torch.Tensor:
    """Refined alpha (1, 1, H, W): the guided refinement of ``prior`` inside ``band``, ``prior`` elsewhere.

    ``image``: (1, 3, H, W) sRGB-encoded RGB in [0, 1]; ``prior``: (1, 1, H, W) coarse alpha
    upsampled to full size; ``band``: (1, 1, H, W), refined where > 0. The output has the prior's
    dtype and device; outside the band it equals the prior exactly, inside it is in [0, 1]. Any
    device; computed in float32 (window statistics in float64). ``passes``: (radius, subsampling)
    pairs, coarse to fine, by default ``default_passes`` for the frame's size. ``tile`` only
    changes speed, not the result.
    """
    if passes is None:
        passes = default_passes(*image.shape[2:]) if image.dim() == 4 else PASSES
    _check(image, prior, band, passes, tile, snap)
    with torch.no_grad():
        return _refine(image, prior, band, tuple(passes), snap, tile)


def _check(image, prior, band, passes, tile, snap) -> None:
    if image.dim() != 4 or tuple(image.shape[:2]) != (1, 3):
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    size = tuple(image.shape[2:])
    for name, x in (("prior", prior), ("band", band)):
        if x.dim() != 4 or tuple(x.shape) != (1, 1) + size:
            raise ValueError(f"{name} must be (1, 1, {size[0]}, {size[1]}), got {tuple(x.shape)}")
    if not passes:
        raise ValueError("at least one pass is needed")
    for radius, step in passes:
        if step < 1 or radius < step or radius % step or tile % step:
            raise ValueError(f"pass (radius {radius}, subsampling {step}): the radius must be a positive "
                             f"multiple of the subsampling, which must divide the tile size {tile}")
    if not 0 <= snap < 0.5:
        raise ValueError(f"snap must be in [0, 0.5), got {snap}")


def _refine(image, prior, band, passes, snap, tile):
    device = prior.device
    height, width = prior.shape[2:]
    prior32 = prior.to(torch.float32)[0].contiguous()  # (1, H, W)
    in_band = (band.to(device)[0] > 0).contiguous()  # (1, H, W) bool
    # Active tiles: those holding a band pixel.
    active = F.max_pool2d(in_band[None].to(torch.float32), tile, ceil_mode=True)[0, 0] > 0
    if not bool(active.any()):
        return prior.clone()

    rgb = image[0].to(device=device, dtype=torch.float32).contiguous()
    tiles = _Tiles(active, tile, height, width)
    # Full-resolution data of the active tiles, gathered once.
    tile_rgb = srgb_to_linear(tiles.gather(rgb))  # (N, 3, T, T)
    tile_prior = tiles.gather(prior32)
    tile_band = tiles.gather(in_band)
    # Tiles cut by the frame's edge pool only their part inside (as the canvases are filled).
    inside = None if tiles.all_full else tiles.inside().unsqueeze(1).to(torch.float32)

    levels = {}
    for step in sorted({step for _, step in passes}):
        halo = max(_halo(radius // step) for radius, s in passes if s == step)
        levels[step] = _Level(active, tiles, step, halo, device)
    _fill(levels, rgb, prior32, tile)

    alpha = tile_prior
    for index, (radius, step) in enumerate(passes):
        level = levels[step]
        level.solve(radius // step)
        q = _apply(level.coefficients(tiles), tile_rgb, step, tile)
        last = index == len(passes) - 1
        if last and snap > 0:
            q = (q - snap) / (1.0 - 2.0 * snap)
        alpha = torch.where(tile_band, q.clamp_(0.0, 1.0), tile_prior)
        if not last:
            for other in levels.values():
                other.update_alpha(tiles, alpha, inside)

    out = prior32.clone()
    tiles.scatter(out, alpha)
    return out[None].to(prior.dtype)


def _halo(radius: int) -> int:
    """Low-resolution margin a solve block's crop needs: two windows' reach (statistics, then
    the averaging of the coefficients) and one pixel for the bilinear upsampling."""
    return 2 * radius + 1


def _solve_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _fill(levels: dict, rgb: torch.Tensor, prior: torch.Tensor, tile: int) -> None:
    """Fill the levels' canvases by pooling the union of their regions (views of the frame, no
    gather). The guide is encoded before pooling, so block means are in linear light; coarser
    levels pool the finest level's blocks when their steps are multiples of its step."""
    top = min(level.region[0] for level in levels.values())
    bottom = max(level.region[1] for level in levels.values())
    left = min(level.region[2] for level in levels.values())
    right = max(level.region[3] for level in levels.values())
    region = (top, bottom, left, right)
    finest = min(levels)
    pooled = _pool_region(rgb, prior, region, finest, tile)
    for step, level in levels.items():
        if step % finest == 0:
            level.fill(pooled, (top, left), finest)
        else:
            level.fill(_pool_region(rgb, prior, region, step, tile), (top, left), step)


def _pool_region(rgb, prior, region, step: int, tile: int) -> torch.Tensor:
    """(4, h, w): encoded guide and prior over ``region`` (top, bottom, left, right) of the frame,
    pooled by ``step`` (blocks cut by the frame's edge: their part inside), in bands of rows so
    that the encoded full-resolution copy stays small."""
    top, bottom, left, right = region
    out = rgb.new_empty((4, -(-(bottom - top) // step), -(-(right - left) // step)))
    rows = tile * max(1, 512 // tile)  # a multiple of the tile, so of the step
    for start in range(top, bottom, rows):
        stop = min(start + rows, bottom)
        band = torch.cat([srgb_to_linear(rgb[:, start:stop, left:right]), prior[:, start:stop, left:right]])
        pooled = F.avg_pool2d(band[None], step, ceil_mode=True)[0]
        out[:, (start - top) // step:(start - top) // step + pooled.shape[1]] = pooled
    return out


class _Tiles:
    """The tiles of a tile-grid mask, with gathers and scatters over them. Tiles wholly inside
    the frame go through a strided view of the frame; the few cut by its edge, through indices
    clamped to the frame (pixels past the edge replicate it)."""

    def __init__(self, mask: torch.Tensor, tile: int, height: int, width: int):
        self.tile, self.height, self.width = tile, height, width
        self.ty, self.tx = mask.nonzero(as_tuple=True)
        self.count = int(self.ty.numel())
        full = ((self.ty + 1) * tile <= height) & ((self.tx + 1) * tile <= width)
        self.all_full = bool(full.all())
        self.full = full.nonzero()[:, 0]
        self.partial = (~full).nonzero()[:, 0]
        steps = torch.arange(tile, device=mask.device)
        self.rows = self.ty[self.partial, None] * tile + steps  # (P, T), unclamped
        self.cols = self.tx[self.partial, None] * tile + steps

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(C, H, W) contiguous -> strided view (C, H // T, W // T, T, T) of its whole tiles."""
        channels, height, width = x.shape
        t = self.tile
        return x.as_strided((channels, height // t, width // t, t, t),
                            (height * width, t * width, t, width, 1))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(C, H, W) contiguous -> (N, C, T, T)."""
        if self.all_full:
            return self._blocks(x)[:, self.ty, self.tx].transpose(0, 1)
        out = x.new_empty((self.count, x.shape[0], self.tile, self.tile))
        if self.full.numel():
            out[self.full] = self._blocks(x)[:, self.ty[self.full], self.tx[self.full]].transpose(0, 1)
        rows, cols = self.rows.clamp(max=self.height - 1), self.cols.clamp(max=self.width - 1)
        out[self.partial] = x[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)
        return out

    def inside(self) -> torch.Tensor:
        """(N, T, T) bool: which pixels of each tile are inside the frame."""
        inside = torch.ones((self.count, self.tile, self.tile), dtype=torch.bool, device=self.ty.device)
        inside[self.partial] = (self.rows < self.height)[:, :, None] & (self.cols < self.width)[:, None, :]
        return inside

    def scatter(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """Write (N, C, T, T) values into the (C, H, W) contiguous target, inside the frame only."""
        if self.full.numel():
            self._blocks(target)[:, self.ty[self.full], self.tx[self.full]] = values[self.full].transpose(0, 1)
        if self.partial.numel():
            inside = (self.rows < self.height)[:, :, None] & (self.cols < self.width)[:, None, :]
            flat = (self.rows[:, :, None] * self.width + self.cols[:, None, :])[inside]
            target.view(target.shape[0], -1)[:, flat] = values[self.partial].transpose(0, 1)[:, inside]


def _window(start: torch.Tensor, length: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices start + [0, length) per row of ``start`` (N,), clamped into [0, limit), and which are inside."""
    index = start[:, None] + torch.arange(length, device=start.device)
    return index.clamp(0, limit - 1), (index >= 0) & (index < limit)


class _Level:
    """One subsampling ``step``: a canvas at 1/step resolution holding the pooled guide (3) and
    the pooled current alpha (1) over the active tiles and the halo their windows reach, and the
    window-averaged guided-filter coefficients (A, b), solved in blocks of SOLVE_BLOCK x
    SOLVE_BLOCK low-resolution pixels that cover the active tiles."""

    def __init__(self, active: torch.Tensor, tiles: _Tiles, step: int, halo: int, device):
        tile, height, width = tiles.tile, tiles.height, tiles.width
        self.step, self.small = step, tile // step
        self.limits = (math.ceil(height / step), math.ceil(width / step))  # low-res pixels touching the frame
        self.dtype = _solve_dtype(device)
        block = SOLVE_BLOCK * step  # full-resolution side of a solve block
        pad = max(block, tile)
        self.size = (math.ceil(height / pad) * pad // step, math.ceil(width / pad) * pad // step)
        # Solve blocks: those holding an active tile.
        grid = active[None, None].float()
        if block >= tile:
            blocks = F.max_pool2d(grid, block // tile, ceil_mode=True)[0, 0] > 0
            covered = blocks.repeat_interleave(block // tile, 0).repeat_interleave(block // tile, 1)
            covered = covered[:active.shape[0], :active.shape[1]]
        else:
            blocks = active.repeat_interleave(tile // block, 0).repeat_interleave(tile // block, 1)
            covered = active
        self.block_y, self.block_x = blocks.nonzero(as_tuple=True)
        # The canvas must hold every low-res pixel the blocks' windows reach: the blocks dilated
        # by the halo (in tiles); ``fill`` pools the bounding box of that region.
        reach = math.ceil((halo + 1) * step / tile)
        needed = F.max_pool2d(covered[None, None].float(), 2 * reach + 1, 1, reach)[0, 0] > 0
        ys, xs = needed.any(1).nonzero()[:, 0], needed.any(0).nonzero()[:, 0]
        self.region = (int(ys[0]) * tile, min((int(ys[-1]) + 1) * tile, height),
                       int(xs[0]) * tile, min((int(xs[-1]) + 1) * tile, width))  # top, bottom, left, right
        self.canvas = torch.zeros((4,) + self.size, dtype=self.dtype, device=device)
        self.solved = torch.zeros_like(self.canvas)

    def fill(self, source: torch.Tensor, origin: tuple[int, int], pooled_by: int) -> None:
        """Pool this level's region out of ``source`` (4, h, w), the encoded guide and the prior
        already pooled by ``pooled_by``, whose top-left pixel is the frame's pixel ``origin``."""
        top, bottom, left, right = self.region
        region = source[:, (top - origin[0]) // pooled_by:-(-(bottom - origin[0]) // pooled_by),
                        (left - origin[1]) // pooled_by:-(-(right - origin[1]) // pooled_by)]
        pooled = F.avg_pool2d(region[None], self.step // pooled_by, ceil_mode=True)[0]
        row, col = top // self.step, left // self.step
        self.canvas[:, row:row + pooled.shape[1], col:col + pooled.shape[2]] = pooled

    def update_alpha(self, tiles: _Tiles, alpha: torch.Tensor, inside: torch.Tensor | None) -> None:
        """Pool the tiles' new alpha into the canvas (tiles cut by the frame's edge: their part inside)."""
        if inside is None:
            pooled = F.avg_pool2d(alpha, self.step)
        else:
            pooled = F.avg_pool2d(alpha * inside, self.step) / F.avg_pool2d(inside, self.step).clamp_min(1e-12)
        s = self.small
        view = self.canvas.view(4, self.size[0] // s, s, self.size[1] // s, s).permute(1, 3, 0, 2, 4)
        view[tiles.ty, tiles.tx, 3:4] = pooled.to(self.dtype)

    def solve(self, radius: int) -> None:
        """Coefficients (A, b) of every solve block and a one-pixel margin, into ``self.solved``."""
        block, halo = SOLVE_BLOCK, _halo(radius)
        rows, rows_in = _window(self.block_y * block - halo, block + 2 * halo, self.limits[0])
        cols, cols_in = _window(self.block_x * block - halo, block + 2 * halo, self.limits[1])
        crops = self.canvas[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)
        inside = (rows_in[:, :, None] & cols_in[:, None, :]).unsqueeze(1).to(self.dtype)
        # (N, 4, block + 2, block + 2): the block and its margin
        coefficients = _coefficients(crops[:, :3], crops[:, 3:], inside, radius)
        out_rows, rows_ok = _window(self.block_y * block - 1, block + 2, self.size[0])
        out_cols, cols_ok = _window(self.block_x * block - 1, block + 2, self.size[1])
        ok = rows_ok[:, :, None] & cols_ok[:, None, :]  # (N, B, B)
        flat = (out_rows[:, :, None] * self.size[1] + out_cols[:, None, :])[ok]
        self.solved.view(4, -1)[:, flat] = coefficients.permute(1, 0, 2, 3)[:, ok]

    def coefficients(self, tiles: _Tiles) -> torch.Tensor:
        """(N, 4, T/s + 2, T/s + 2) float32 coefficients of the tiles with a one-pixel margin; past
        the frame's edge, the edge's (as bilinear upsampling clamps)."""
        rows, _ = _window(tiles.ty * self.small - 1, self.small + 2, self.limits[0])
        cols, _ = _window(tiles.tx * self.small - 1, self.small + 2, self.limits[1])
        return self.solved[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1).to(torch.float32)


_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _coefficients(guide, alpha, inside, radius: int) -> torch.Tensor:
    """Window-averaged (A, b) of the confidence-weighted colour guided filter on (N, ., S, S)
    crops, ``inside`` (N, 1, S, S) marking the pixels in the frame: (N, 4, S - 4r, S - 4r), the
    crop positions 2r .. S - 2r (those whose windows' windows fit in the crop)."""
    # Centre the guide per crop: the filter is shift-invariant, and the sums lose less.
    offset = (guide * inside).sum((2, 3), keepdim=True) / inside.sum((2, 3), keepdim=True).clamp_min(1.0)
    guide = guide - offset
    weight = inside * (CONFIDENCE_FLOOR + (2.0 * alpha - 1.0).abs() ** CONFIDENCE_POWER)
    wg = weight * guide
    stats = torch.cat([weight, wg, weight * alpha, wg * alpha]
                      + [wg[:, i:i + 1] * guide[:, j:j + 1] for i, j in _PAIRS], 1)
    stats = valid_window_sum(stats, 2 * radius + 1)  # windows centred at positions r .. S - r
    inside = inside[:, :, radius:-radius, radius:-radius]
    means = stats[:, 1:] / stats[:, 0:1].clamp_min(1e-12)
    mean_i, mean_p, mean_ip = means[:, 0:3], means[:, 3:4], means[:, 4:7]
    cov = mean_ip - mean_i * mean_p
    m0, m1, m2 = mean_i[:, 0:1], mean_i[:, 1:2], mean_i[:, 2:3]
    s = means[:, 7:]
    a00 = s[:, 0:1] - m0 * m0 + EPS
    a01 = s[:, 1:2] - m0 * m1
    a02 = s[:, 2:3] - m0 * m2
    a11 = s[:, 3:4] - m1 * m1 + EPS
    a12 = s[:, 4:5] - m1 * m2
    a22 = s[:, 5:6] - m2 * m2 + EPS
    # Symmetric 3 x 3 inverse by cofactors.
    i00 = a11 * a22 - a12 * a12
    i01 = a02 * a12 - a01 * a22
    i02 = a01 * a12 - a02 * a11
    i11 = a00 * a22 - a02 * a02
    i12 = a01 * a02 - a00 * a12
    i22 = a00 * a11 - a01 * a01
    det = (a00 * i00 + a01 * i01 + a02 * i02).clamp_min(EPS ** 3)
    c0, c1, c2 = cov[:, 0:1], cov[:, 1:2], cov[:, 2:3]
    a = torch.cat([i00 * c0 + i01 * c1 + i02 * c2,
                   i01 * c0 + i11 * c1 + i12 * c2,
                   i02 * c0 + i12 * c1 + i22 * c2], 1) / det
    b = mean_p - (a * (mean_i + offset)).sum(1, keepdim=True)  # for the uncentred guide
    averaged = valid_window_sum(torch.cat([inside * a, inside * b, inside], 1), 2 * radius + 1)
    return averaged[:, :4] / averaged[:, 4:5].clamp_min(1e-12)


_UPSAMPLERS: dict = {}


def _upsampler(step: int, tile: int, device, dtype) -> torch.Tensor:
    """(T, T/s + 2) bilinear weights (align_corners=False) from a low-resolution tile with a
    one-pixel margin to its full-resolution pixels: F.interpolate's mapping, as a matrix."""
    key = (step, tile, str(device), dtype)
    if key not in _UPSAMPLERS:
        source = (torch.arange(tile, dtype=torch.float64) + 0.5) / step - 0.5 + 1.0  # +1: the margin
        low = source.floor()
        frac = source - low
        matrix = torch.zeros(tile, tile // step + 2, dtype=torch.float64)
        rows = torch.arange(tile)
        matrix[rows, low.long()] += 1.0 - frac
        matrix[rows, low.long() + 1] += frac
        _UPSAMPLERS[key] = matrix.to(device=device, dtype=dtype)
    return _UPSAMPLERS[key]


def _apply(coefficients: torch.Tensor, tile_rgb: torch.Tensor, step: int, tile: int) -> torch.Tensor:
    """q = A . I + b at full resolution on the tiles, A and b upsampled bilinearly: (N, 1, T, T)."""
    up = _upsampler(step, tile, tile_rgb.device, tile_rgb.dtype)
    full = up @ coefficients @ up.T  # (N, 4, T, T)
    return (full[:, :3] * tile_rgb).sum(1, keepdim=True) + full[:, 3:4]
