"""Sparse convolution backends: the rulebook ("plan") for one frame's active sites.

``torch`` (default everywhere) builds neighbour maps and runs :func:`gather_conv`.
``spconv`` (optional, for CUDA) runs the same rules through spconv 2.x modules; it is
checked against ``torch`` in the tests. On CPU, spconv 2.3.8 is only correct with one
torch thread (a race in its scatter-add), so a spconv plan runs the refine under
``torch.set_num_threads(1)`` there, and the torch backend is the faster one on CPU
(docs/PERFORMANCE.md). A refine runs inside ``with plan.running():``.
"""
from __future__ import annotations

import re
import weakref
from contextlib import contextmanager, nullcontext

import torch

from .sparse import Downsample, Sites, downsample, gather_conv, rulebooks, site_levels, submanifold_map

BACKENDS = ("torch", "spconv")
_RULE = re.compile(r"(subm|down|up)(\d)(?:_d(\d))?$")


def parse_rule(rule: str) -> tuple[str, int, int]:
    kind, level, dilation = _RULE.match(rule).groups()
    return kind, int(level), int(dilation or 1)


def depth(rules) -> int:
    """How many stride-2 levels below the full resolution ``rules`` reach."""
    return max((level + (kind != "subm") for kind, level, _ in map(parse_rule, rules)), default=0)


class TorchPlan:
    """Every rulebook ``rules`` need on one frame's active sites (``mask``, boolean H x W), built at
    once: four host synchronisations in all (site counts, sites, entry counts, entry rows), however
    many rules, so a GPU never waits on the host in between."""

    def __init__(self, mask: torch.Tensor, rules):
        self.levels = levels = site_levels(mask, depth(rules))  # the full resolution's sites, then each level below
        self.sites = levels[0]
        steps: dict[int, Downsample] = {}
        maps = {}
        for rule in rules:
            kind, level, dilation = parse_rule(rule)
            if kind == "subm":
                maps[rule] = (submanifold_map(levels[level], dilation), levels[level].count)
                continue
            if level not in steps:
                steps[level] = downsample(levels[level], levels[level + 1])
            step = steps[level]
            maps[rule] = (step.forward_map, step.fine.count) if kind == "down" else (step.inverse_map, step.coarse.count)
        self.rulebooks = rulebooks(maps)

    def running(self):
        return nullcontext()

    def conv(self, rule: str, features, weight, bias):
        return gather_conv(features, self.rulebooks[rule], weight, bias)


class SpconvPlan:
    """The same rules through spconv 2.x modules. A module is built once per weight of the model, its
    weights laid out in spconv's ``[out, kh, kw, in]`` then, and rebuilt only when that weight
    changes (fine-tuning) or moves; on CPU the whole refine runs on one thread (``running``)."""

    def __init__(self, mask: torch.Tensor, rules=()):
        import spconv.pytorch as spconv  # optional dependency

        self._spconv = spconv
        self.sites = sites = Sites.from_mask(mask)
        device = sites.coords.device
        indices = torch.cat([torch.zeros_like(sites.coords[:, :1]), sites.coords], dim=1).int()
        self._carriers = {0: spconv.SparseConvTensor(torch.zeros(sites.count, 1, device=device), indices,
                                                     list(sites.shape), 1)}
        self._indice_dict: dict = {}
        self._cpu = device.type == "cpu"

    @contextmanager
    def running(self):
        """spconv 2.3.8 is only correct on one torch thread on CPU (a race in its scatter-add)."""
        threads = torch.get_num_threads()
        if self._cpu:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _module(self, rule: str, key: str | None, weight, bias):
        identity = (rule, key, weight._version, None if bias is None else bias._version, weight.device, weight.dtype)
        cached = _SPCONV_MODULES.get(id(weight))
        if cached is not None and cached[0] == identity:
            return cached[1]
        spconv = self._spconv
        kind, level, dilation = parse_rule(rule)
        cin, cout = weight.shape[1], weight.shape[2]
        options = dict(bias=bias is not None, indice_key=key)
        if self._cpu:
            options["algo"] = spconv.ConvAlgo.Native
        if kind == "subm":
            module = spconv.SubMConv2d(cin, cout, 3, padding=dilation, dilation=dilation, **options)
        elif kind == "down":
            module = spconv.SparseConv2d(cin, cout, 3, stride=2, padding=1, **options)
        else:
            module = spconv.SparseInverseConv2d(cin, cout, 3, **options)
        module = module.to(weight.device, weight.dtype)
        with torch.no_grad():
            module.weight.copy_(weight.reshape(3, 3, cin, cout).permute(3, 0, 1, 2))
            if bias is not None:
                module.bias.copy_(bias)
        if cached is None:  # the entry goes with the weight (tensors cannot be weak dictionary keys)
            weakref.finalize(weight, _SPCONV_MODULES.pop, id(weight), None)
        _SPCONV_MODULES[id(weight)] = (identity, module)
        return module

    def conv(self, rule: str, features, weight, bias):
        kind, level, dilation = parse_rule(rule)
        if kind == "subm":
            key, source = f"subm{level}d{dilation}", level
        elif kind == "down":
            # spconv 2.x only reuses submanifold rulebooks: a second strided conv from the same
            # level computes its own, and its rows are aligned to the first one's below.
            key, source = (None if level + 1 in self._carriers else f"step{level}"), level
        else:
            key, source = f"step{level}", level + 1
        module = self._module(rule, key, weight, bias)
        tensor = self._carriers[source].replace_feature(features.contiguous())
        tensor.indice_dict = self._indice_dict
        out = module(tensor)
        self._indice_dict.update(out.indice_dict)
        if kind != "down":
            return out.features
        if level + 1 not in self._carriers:
            self._carriers[level + 1] = out
            return out.features
        return _align_rows(out, self._carriers[level + 1])


# id(weight) -> (what the module was built from, the module): one module per convolution of a model
_SPCONV_MODULES: dict[int, tuple] = {}


def _align_rows(tensor, reference):
    """``tensor``'s features reordered to ``reference``'s site order (same site set)."""
    width = reference.spatial_shape[1]

    def flat(indices):
        return indices[:, 1].long() * width + indices[:, 2].long()

    order = torch.argsort(flat(tensor.indices))
    position = torch.searchsorted(flat(tensor.indices)[order], flat(reference.indices))
    return tensor.features[order[position]]


def make_plan(backend: str, mask: torch.Tensor, rules):
    """The plan of ``backend`` for the active sites of ``mask`` (boolean H x W), ready for ``rules``."""
    if backend == "torch":
        return TorchPlan(mask, rules)
    if backend == "spconv":
        return SpconvPlan(mask, rules)
    raise ValueError(f"unknown sparse backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:
        return False
    return True
