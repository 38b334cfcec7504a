"""How often one matte call makes the host wait on the device: each ``item``, ``nonzero``,
``unique`` or ``tolist`` would stall a GPU's queue. Counted on CPU with the profiler (and a
wrapper round ``Tensor.tolist``, which no profiler sees on CPU): the count is a small constant,
not one that grows with the refiner's rules or the number of kernel offsets."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from sparsemat.engine.matting import Matter
from sparsemat.engine.model.backends import TorchPlan

SYNCHRONISING = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique", "aten::_unique2", "aten::unique_dim",
                 "aten::unique_consecutive", "aten::masked_select", "aten::equal")


def synchronisations(call) -> Counter:
    """The host synchronisations ``call()`` makes, by op."""
    tolist = torch.Tensor.tolist
    counts: Counter = Counter()

    def counted(self):
        counts["Tensor.tolist"] += 1
        return tolist(self)

    torch.Tensor.tolist = counted
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
    finally:
        torch.Tensor.tolist = tolist
    counts.update(event.name for event in prof.events() if event.name in SYNCHRONISING)
    return counts


@pytest.fixture(scope="module")
def frames(reference):
    return [torch.from_numpy(frame.astype("float32") / 255) for frame in reference["frames"][:2]]


def test_one_matte_call_waits_on_the_host_a_fixed_few_times(seed1_model, frames):
    matter = Matter(seed1_model)
    _, state, stats = matter.matte(frames[0])
    assert stats.active_fraction > 0.1, "the refiner ran"
    first = synchronisations(lambda: matter.matte(frames[0]))
    second = synchronisations(lambda: matter.matte(frames[1], state))
    # normalize's range check, the mask counts, then the plan: site counts and sites, entry counts and rows
    assert sum(first.values()) <= 6, first
    assert sum(second.values()) <= 6, second


def test_building_every_rulebook_costs_what_building_one_does(seed1_model, frames):
    mask = torch.rand(96, 128, generator=torch.Generator().manual_seed(3)) < 0.4
    rules = seed1_model.shm.rules
    assert len(rules) >= 10
    one, every = synchronisations(lambda: TorchPlan(mask, rules[:1])), synchronisations(lambda: TorchPlan(mask, rules))
    assert sum(every.values()) == sum(one.values()) <= 4, (one, every)
