"""Sparse 2-D convolution over active pixels, in plain PyTorch (gather, GEMM, scatter).

The semantics are spconv 1.x's, which the published checkpoint was trained with:

- submanifold convolution: outputs only at the input's active sites;
- strided convolution (3x3, stride 2, padding 1): an output site is active when
  any active input falls in its window;
- inverse convolution: the transpose of a strided convolution, back onto the
  sites that convolution started from (its rulebook is reused, as spconv does
  with a shared ``indice_key``).

Every one of them reduces to a *neighbour map*: a ``(K, N_out)`` int64 tensor
whose entry ``[k, o]`` is the row of the input feature that kernel offset ``k``
brings to output ``o``, or ``N_in`` when there is none. Prepared once as a
:class:`Rulebook`, it lets one routine, :func:`gather_conv`, run every
convolution the same way.

Kernel offsets are ordered ``k = ky * 3 + kx`` and a weight is ``(K, C_in,
C_out)``: exactly spconv 1.x's ``[kh, kw, in, out]`` layout flattened.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KERNEL_OFFSETS = [(ky - 1, kx - 1) for ky in range(3) for kx in range(3)]


@dataclass(frozen=True)
class Sites:
    """The active pixels of one resolution level: ``coords`` is ``(N, 2)`` int64 (y, x)."""

    coords: torch.Tensor
    shape: tuple[int, int]

    @property
    def count(self) -> int:
        return self.coords.shape[0]

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Sites":
        """Active sites of a 2-D boolean mask, in row-major order."""
        return cls(torch.nonzero(mask), (mask.shape[0], mask.shape[1]))

    def index_grid(self) -> torch.Tensor:
        """Flat ``H * W`` grid holding each site's row, and ``count`` (the empty row) elsewhere."""
        height, width = self.shape
        grid = torch.full((height * width,), self.count, dtype=torch.int64, device=self.coords.device)
        grid[self.coords[:, 0] * width + self.coords[:, 1]] = torch.arange(self.count, device=self.coords.device)
        return grid

    def scatter(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Dense ``(H, W)`` image of per-site scalar ``values``."""
        height, width = self.shape
        dense = torch.full((height, width), fill, dtype=values.dtype, device=values.device)
        dense[self.coords[:, 0], self.coords[:, 1]] = values
        return dense


def _lookup(grid: torch.Tensor, sites: Sites, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows of the sites at (y, x), ``sites.count`` where out of bounds or inactive."""
    height, width = sites.shape
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    flat = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1))
    return torch.where(inside, grid[flat], sites.count)


def submanifold_map(sites: Sites, dilation: int = 1) -> torch.Tensor:
    """Neighbour map of a 3x3 submanifold convolution (padding = dilation)."""
    grid = sites.index_grid()
    y, x = sites.coords[:, 0], sites.coords[:, 1]
    return torch.stack([_lookup(grid, sites, y + dy * dilation, x + dx * dilation) for dy, dx in KERNEL_OFFSETS])


@dataclass(frozen=True)
class Downsample:
    """Rulebook of a 3x3, stride 2, padding 1 sparse convolution and of its inverse."""

    fine: Sites
    coarse: Sites
    forward_map: torch.Tensor  # (9, coarse.count): rows of `fine`
    inverse_map: torch.Tensor  # (9, fine.count): rows of `coarse`


def downsample(fine: Sites) -> Downsample:
    """Output sites of the strided convolution on ``fine``, with both neighbour maps.

    Input ``i`` reaches output ``o`` through offset ``k`` when ``i = 2 o - 1 + k``.
    """
    height, width = fine.shape
    coarse_shape = ((height - 1) // 2 + 1, (width - 1) // 2 + 1)
    y, x = fine.coords[:, 0], fine.coords[:, 1]
    reached = []
    for dy, dx in KERNEL_OFFSETS:
        oy2, ox2 = y - dy, x - dx  # 2 * o for offset k = (dy + 1, dx + 1)
        ok = (oy2 % 2 == 0) & (ox2 % 2 == 0) & (oy2 >= 0) & (ox2 >= 0)
        ok &= (oy2 // 2 < coarse_shape[0]) & (ox2 // 2 < coarse_shape[1])
        reached.append((oy2[ok] // 2) * coarse_shape[1] + ox2[ok] // 2)
    flat = torch.unique(torch.cat(reached))
    coarse = Sites(torch.stack([flat // coarse_shape[1], flat % coarse_shape[1]], dim=1), coarse_shape)

    fine_grid = fine.index_grid()
    cy, cx = coarse.coords[:, 0], coarse.coords[:, 1]
    forward_map = torch.stack([_lookup(fine_grid, fine, 2 * cy + dy, 2 * cx + dx) for dy, dx in KERNEL_OFFSETS])

    coarse_grid = coarse.index_grid()
    inverse = []
    for dy, dx in KERNEL_OFFSETS:
        oy2, ox2 = y - dy, x - dx
        rows = _lookup(coarse_grid, coarse, oy2 // 2, ox2 // 2)
        inverse.append(torch.where((oy2 % 2 == 0) & (ox2 % 2 == 0), rows, coarse.count))
    return Downsample(fine, coarse, forward_map, torch.stack(inverse))


# An offset whose neighbours are mostly present is cheaper as one dense gather (absent rows read
# a zero row) than as a gather plus a scatter of the present ones; inverse convolutions, where
# each fine pixel hears from only 1, 2 or 4 of the 9 offsets, are the sparse case.
DENSE_FRACTION = 0.9


@dataclass(frozen=True)
class Rulebook:
    """A neighbour map prepared for :func:`gather_conv`: per kernel offset ``k``, the output rows
    it reaches (None for all) and the input rows feeding them (``n_in``, the input count, means
    the zero row)."""

    n_out: int
    entries: tuple  # ((k, output rows or None, input rows), ...)

    @classmethod
    def from_neighbours(cls, neighbours: torch.Tensor, n_in: int) -> "Rulebook":
        entries = []
        for k, column in enumerate(neighbours):
            present = column < n_in
            count = int(present.sum())
            if count >= DENSE_FRACTION * column.numel():
                entries.append((k, None, column))
            elif count:
                rows = present.nonzero().squeeze(1)
                entries.append((k, rows, column[rows]))
        return cls(neighbours.shape[1], tuple(entries))


def gather_conv(features: torch.Tensor, rulebook: Rulebook, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``out[o] = bias + sum_k features[neighbour(k, o)] @ weight[k]`` (absent neighbours count as zero)."""
    n_out = rulebook.n_out
    out = features.new_zeros(n_out, weight.shape[2]) if bias is None else bias.expand(n_out, -1).clone()
    padded = None
    for k, rows, columns in rulebook.entries:
        if rows is None:
            if padded is None:
                padded = torch.cat([features, features.new_zeros(1, features.shape[1])])
            out.addmm_(padded.index_select(0, columns), weight[k])
        else:
            out.index_add_(0, rows, features.index_select(0, columns) @ weight[k])
    return out
