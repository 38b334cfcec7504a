"""Sparse convolution backends: the rulebook ("plan") for one frame's active sites.

``torch`` (default everywhere) builds neighbour maps and runs :func:`gather_conv`.
``spconv`` (optional, for CUDA) runs the same rules through spconv 2.x modules; it is
checked against ``torch`` in the tests. On CPU, spconv 2.3.8 is only correct with one
torch thread (a race in its scatter-add), so the spconv plan runs its convolutions
under ``torch.set_num_threads(1)`` there.
"""
from __future__ import annotations

import re

import torch

from .sparse import Downsample, Rulebook, Sites, downsample, gather_conv, submanifold_map

BACKENDS = ("torch", "spconv")
_RULE = re.compile(r"(subm|down|up)(\d)(?:_d(\d))?$")


def parse_rule(rule: str) -> tuple[str, int, int]:
    kind, level, dilation = _RULE.match(rule).groups()
    return kind, int(level), int(dilation or 1)


class TorchPlan:
    """Neighbour maps of one frame, built on first use and shared by every layer that needs them."""

    def __init__(self, sites: Sites):
        self.sites = sites
        self._levels: list[Sites] = [sites]
        self._downs: list[Downsample] = []
        self._books: dict[str, Rulebook] = {}

    def _down(self, level: int) -> Downsample:
        while len(self._downs) <= level:
            step = downsample(self._levels[-1])
            self._downs.append(step)
            self._levels.append(step.coarse)
        return self._downs[level]

    def _level(self, level: int) -> Sites:
        if level > 0:
            self._down(level - 1)
        return self._levels[level]

    def rulebook(self, rule: str) -> Rulebook:
        if rule not in self._books:
            kind, level, dilation = parse_rule(rule)
            if kind == "down":
                step = self._down(level)
                self._books[rule] = Rulebook.from_neighbours(step.forward_map, step.fine.count)
            elif kind == "up":
                step = self._down(level)
                self._books[rule] = Rulebook.from_neighbours(step.inverse_map, step.coarse.count)
            else:
                sites = self._level(level)
                self._books[rule] = Rulebook.from_neighbours(submanifold_map(sites, dilation), sites.count)
        return self._books[rule]

    def conv(self, rule: str, features, weight, bias):
        return gather_conv(features, self.rulebook(rule), weight, bias)


class SpconvPlan:
    """The same rules through spconv 2.x modules; weights are mapped to its ``[out, kh, kw, in]``."""

    def __init__(self, sites: Sites):
        import spconv.pytorch as spconv  # optional dependency

        self._spconv = spconv
        self.sites = sites
        device = sites.coords.device
        indices = torch.cat([torch.zeros_like(sites.coords[:, :1]), sites.coords], dim=1).int()
        self._carriers = {0: spconv.SparseConvTensor(torch.zeros(sites.count, 1, device=device), indices,
                                                     list(sites.shape), 1)}
        self._indice_dict: dict = {}
        self._cpu = device.type == "cpu"

    def conv(self, rule: str, features, weight, bias):
        spconv = self._spconv
        kind, level, dilation = parse_rule(rule)
        cin, cout = weight.shape[1], weight.shape[2]
        options = dict(bias=bias is not None, indice_key=f"{kind}{level}" if kind != "subm" else f"subm{level}d{dilation}")
        if self._cpu:
            options["algo"] = spconv.ConvAlgo.Native
        if kind == "subm":
            module = spconv.SubMConv2d(cin, cout, 3, padding=dilation, dilation=dilation, **options)
            source = level
        elif kind == "down":
            # spconv 2.x only reuses submanifold rulebooks: a second strided conv from the same
            # level computes its own, and its rows are aligned to the first one's below.
            key = None if level + 1 in self._carriers else f"step{level}"
            module = spconv.SparseConv2d(cin, cout, 3, stride=2, padding=1, **{**options, "indice_key": key})
            source = level
        else:
            module = spconv.SparseInverseConv2d(cin, cout, 3, **{**options, "indice_key": f"step{level}"})
            source = level + 1
        module = module.to(features.device, features.dtype)
        with torch.no_grad():
            module.weight.copy_(weight.reshape(3, 3, cin, cout).permute(3, 0, 1, 2))
            if bias is not None:
                module.bias.copy_(bias)
        carrier = self._carriers[source]
        tensor = carrier.replace_feature(features.contiguous())
        tensor.indice_dict = self._indice_dict
        threads = torch.get_num_threads()
        if self._cpu:
            torch.set_num_threads(1)
        try:
            out = module(tensor)
        finally:
            torch.set_num_threads(threads)
        self._indice_dict.update(out.indice_dict)
        if kind != "down":
            return out.features
        if level + 1 not in self._carriers:
            self._carriers[level + 1] = out
            return out.features
        return _align_rows(out, self._carriers[level + 1])


def _align_rows(tensor, reference):
    """``tensor``'s features reordered to ``reference``'s site order (same site set)."""
    width = reference.spatial_shape[1]

    def flat(indices):
        return indices[:, 1].long() * width + indices[:, 2].long()

    order = torch.argsort(flat(tensor.indices))
    position = torch.searchsorted(flat(tensor.indices)[order], flat(reference.indices))
    return tensor.features[order[position]]


def make_plan(backend: str, sites: Sites):
    if backend == "torch":
        return TorchPlan(sites)
    if backend == "spconv":
        return SpconvPlan(sites)
    raise ValueError(f"unknown sparse backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:
        return False
    return True
