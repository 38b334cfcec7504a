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


def pooled(mask: torch.Tensor) -> torch.Tensor:
    """Active sites one stride-2 level down: an output is active when any active input falls in its
    3x3, stride 2, padding 1 window (the strided convolution's output sites, as spconv finds them)."""
    height, width = mask.shape
    coarse_h, coarse_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    padded = mask.new_zeros(height + 2, width + 2)
    padded[1:-1, 1:-1] = mask
    out = mask.new_zeros(coarse_h, coarse_w)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + 2 * coarse_h - 1 : 2, dx : dx + 2 * coarse_w - 1 : 2]
    return out


def site_levels(mask: torch.Tensor, depth: int) -> list[Sites]:
    """The active sites of ``mask`` and of ``depth`` successive stride-2 levels below it, in row-major
    order, with two host synchronisations in all (the counts and one ``nonzero``), whatever the depth."""
    masks = [mask]
    for _ in range(depth):
        masks.append(pooled(masks[-1]))
    counts = torch.stack([level.sum() for level in masks]).tolist()
    found = torch.nonzero(torch.cat([level.reshape(-1) for level in masks])).squeeze(1)
    levels, first, offset = [], 0, 0
    for level, count in zip(masks, counts):
        flat = found[first : first + count] - offset
        width = level.shape[1]
        levels.append(Sites(torch.stack([flat // width, flat % width], dim=1), (level.shape[0], width)))
        first, offset = first + count, offset + level.numel()
    return levels


@dataclass(frozen=True)
class Downsample:
    """Rulebook of a 3x3, stride 2, padding 1 sparse convolution and of its inverse."""

    fine: Sites
    coarse: Sites
    forward_map: torch.Tensor  # (9, coarse.count): rows of `fine`
    inverse_map: torch.Tensor  # (9, fine.count): rows of `coarse`


def downsample(fine: Sites, coarse: Sites) -> Downsample:
    """Both neighbour maps of the strided convolution from ``fine`` to ``coarse`` (``pooled`` sites).

    Input ``i`` reaches output ``o`` through offset ``k`` when ``i = 2 o - 1 + k``.
    """
    fine_grid = fine.index_grid()
    cy, cx = coarse.coords[:, 0], coarse.coords[:, 1]
    forward_map = torch.stack([_lookup(fine_grid, fine, 2 * cy + dy, 2 * cx + dx) for dy, dx in KERNEL_OFFSETS])

    coarse_grid = coarse.index_grid()
    y, x = fine.coords[:, 0], fine.coords[:, 1]
    inverse = []
    for dy, dx in KERNEL_OFFSETS:  # shifts and masks, not // and %: integer division is slow on CPU
        oy2, ox2 = y - dy, x - dx
        rows = _lookup(coarse_grid, coarse, oy2 >> 1, ox2 >> 1)
        inverse.append(torch.where(((oy2 | ox2) & 1) == 0, rows, coarse.count))
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
    n_in: int = 0
    pairs: int = 0  # real (input, output) pairs over all offsets

    @classmethod
    def from_neighbours(cls, neighbours: torch.Tensor, n_in: int) -> "Rulebook":
        return rulebooks({"": (neighbours, n_in)})[""]


def rulebooks(maps: dict) -> dict:
    """``{name: Rulebook}`` of ``{name: (neighbour map, n_in)}``, all prepared together with two host
    synchronisations (the present count of every offset, one ``nonzero``), whatever their number."""
    names = list(maps)
    present = {name: maps[name][0] < maps[name][1] for name in names}
    counts = torch.cat([present[name].sum(dim=1) for name in names]).tolist() if names else []
    plans, sparse = {}, []  # per name: [(k, kind)], kind "dense" or the index of its sparse segment
    for index, name in enumerate(names):
        neighbours = maps[name][0]
        plans[name] = []
        for k in range(neighbours.shape[0]):
            count = counts[index * neighbours.shape[0] + k]
            if count >= DENSE_FRACTION * neighbours.shape[1]:
                plans[name].append((k, "dense"))
            elif count:
                plans[name].append((k, len(sparse)))
                sparse.append((present[name][k], count))
    rows = []
    if sparse:
        found = torch.nonzero(torch.cat([mask for mask, _ in sparse])).squeeze(1)
        first, offset = 0, 0
        for mask, count in sparse:
            rows.append(found[first : first + count] - offset)
            first, offset = first + count, offset + mask.numel()
    books = {}
    for index, name in enumerate(names):
        neighbours, n_in = maps[name]
        entries = tuple((k, None, neighbours[k]) if kind == "dense" else (k, rows[kind], neighbours[k][rows[kind]])
                        for k, kind in plans[name])
        pairs = sum(counts[index * neighbours.shape[0] : (index + 1) * neighbours.shape[0]])
        books[name] = Rulebook(neighbours.shape[1], entries, n_in, pairs)
    return books


# Products first when every input row is used by (nearly) every offset and the product is narrower
# than the input: the gathers then move C_out-wide rows instead of C_in-wide ones, for about the
# same arithmetic (submanifold and inverse convolutions into fewer channels; strided ones, whose
# inputs each reach few outputs, would multiply rows nobody reads).
PRODUCTS_FIRST_WASTE = 1.15  # computed products per real pair, at most


def gather_conv(features: torch.Tensor, rulebook: Rulebook, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``out[o] = bias + sum_k features[neighbour(k, o)] @ weight[k]`` (absent neighbours count as zero).
    Differentiable: autograd follows the gathers, products and scatters when training."""
    n_out, c_in, c_out = rulebook.n_out, weight.shape[1], weight.shape[2]
    out = features.new_zeros(n_out, c_out) if bias is None else bias.expand(n_out, -1).clone()
    n_in = features.shape[0]
    if c_out < c_in and len(rulebook.entries) * n_in <= PRODUCTS_FIRST_WASTE * rulebook.pairs:
        # autograd refuses out= arguments: when it records, each offset's products get a buffer of their own
        recording = torch.is_grad_enabled() and (features.requires_grad or weight.requires_grad)
        products = features.new_zeros(n_in + 1, c_out)  # the last row stays zero: the absent neighbour
        for k, rows, columns in rulebook.entries:
            if recording:
                products = torch.cat([features @ weight[k], products[n_in:]])
            else:
                torch.mm(features, weight[k], out=products[:n_in])
            if rows is None:
                out.add_(products.index_select(0, columns))
            else:
                out.index_add_(0, rows, products.index_select(0, columns))
        return out
    padded = None
    for k, rows, columns in rulebook.entries:
        if rows is None:
            if padded is None:
                padded = torch.cat([features, features.new_zeros(1, c_in)])
            out.addmm_(padded.index_select(0, columns), weight[k])
        else:
            out.index_add_(0, rows, features.index_select(0, columns) @ weight[k])
    return out
