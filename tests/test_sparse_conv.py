"""The pure-torch sparse convolutions against dense torch convolutions, and against spconv."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_faithful, make_checkpoint
from sparsemat.engine.model.backends import make_plan, parse_rule, spconv_available
from sparsemat.engine.model.sparse import Rulebook, Sites, downsample, gather_conv, site_levels, submanifold_map


def dense_features(sites: Sites, features: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) with the site features in place and zeros elsewhere."""
    dense = features.new_zeros(features.shape[1], *sites.shape)
    dense[:, sites.coords[:, 0], sites.coords[:, 1]] = features.T
    return dense[None]


def at_sites(dense: torch.Tensor, sites: Sites) -> torch.Tensor:
    return dense[0, :, sites.coords[:, 0], sites.coords[:, 1]].T


def as_oihw(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(3, 3, weight.shape[1], weight.shape[2]).permute(3, 2, 0, 1)


@pytest.fixture(params=[1.0, 0.15], ids=["dense", "sparse"])
def level(request):
    generator = torch.Generator().manual_seed(7)
    mask = torch.rand(23, 30, generator=generator) < request.param
    sites = Sites.from_mask(mask)
    return sites, torch.randn(sites.count, 5, generator=generator, dtype=torch.float64)


def one_step(sites: Sites):
    """The strided convolution's rulebooks from ``sites`` to the level below."""
    fine, coarse = site_levels(sites.scatter(torch.ones(sites.count)) > 0, 1)
    assert torch.equal(fine.coords, sites.coords)
    return downsample(fine, coarse)


@pytest.mark.parametrize("dilation", [1, 2])
def test_submanifold_equals_dense_conv_at_active_sites(level, dilation):
    sites, features = level
    weight = torch.randn(9, 5, 4, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    ours = gather_conv(features, Rulebook.from_neighbours(submanifold_map(sites, dilation), sites.count), weight, bias)
    dense = F.conv2d(dense_features(sites, features), as_oihw(weight), bias, padding=dilation, dilation=dilation)
    torch.testing.assert_close(ours, at_sites(dense, sites))


def test_strided_conv_sites_and_values_equal_dense_conv(level):
    sites, features = level
    weight = torch.randn(9, 5, 4, dtype=torch.float64)
    step = one_step(sites)
    dense_mask = dense_features(sites, torch.ones(sites.count, 1, dtype=torch.float64))
    reached = F.max_pool2d(dense_mask, 3, stride=2, padding=1)[0, 0] > 0
    assert torch.equal(step.coarse.coords, torch.nonzero(reached))
    ours = gather_conv(features, Rulebook.from_neighbours(step.forward_map, sites.count), weight)
    dense = F.conv2d(dense_features(sites, features), as_oihw(weight), stride=2, padding=1)
    torch.testing.assert_close(ours, at_sites(dense, step.coarse))


def test_inverse_conv_equals_transposed_conv(level):
    sites, _ = level
    step = one_step(sites)
    coarse_features = torch.randn(step.coarse.count, 6, dtype=torch.float64)
    weight = torch.randn(9, 6, 3, dtype=torch.float64)
    ours = gather_conv(coarse_features, Rulebook.from_neighbours(step.inverse_map, step.coarse.count), weight)
    height = sites.shape[0] - (2 * step.coarse.shape[0] - 1)
    width = sites.shape[1] - (2 * step.coarse.shape[1] - 1)
    transposed = weight.reshape(3, 3, 6, 3).permute(2, 3, 0, 1)
    dense = F.conv_transpose2d(dense_features(step.coarse, coarse_features), transposed, stride=2, padding=1,
                               output_padding=(height, width))
    torch.testing.assert_close(ours, at_sites(dense, sites))


def test_empty_sites_give_empty_output():
    sites = Sites.from_mask(torch.zeros(8, 8, dtype=torch.bool))
    out = gather_conv(torch.zeros(0, 3), Rulebook.from_neighbours(submanifold_map(sites), 0), torch.randn(9, 3, 2))
    assert out.shape == (0, 2)


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed (pip install '.[spconv]')")
def test_spconv_backend_matches_torch_backend_on_another_seed_and_odd_size(tmp_path):
    """Whole pipeline (prior, band, temporal, cascade) through both backends: seed 2, 203 x 331."""
    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import SparseMat

    model = SparseMat.from_checkpoint(str(make_checkpoint(2, tmp_path / "seed2.pth")))
    generator = np.random.default_rng(3)
    base = generator.random((203, 331, 3), dtype=np.float32)
    frames = [torch.from_numpy(base), torch.from_numpy(np.roll(base, 4, axis=1))]
    results = {}
    for backend in ("torch", "spconv"):
        matter = Matter(model, backend=backend)
        first, state, _ = matter.matte(frames[0])
        second, _, stats = matter.matte(frames[1], state)
        cascade, _, cascade_stats = Matter(model, backend=backend, max_pixels=20000).matte(frames[0])
        assert stats.reused and cascade_stats.mode == "cascade"
        results[backend] = (first.numpy(), second.numpy(), cascade.numpy())
    for label, ours, theirs in zip(("image", "temporal", "cascade"), results["torch"], results["spconv"]):
        assert_faithful(ours, theirs, label)


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed (pip install '.[spconv]')")
def test_spconv_plan_matches_torch_plan_per_rule():
    generator = torch.Generator().manual_seed(11)
    mask = torch.rand(40, 37, generator=generator) < 0.3
    rules = ("subm0", "subm0_d2", "down0", "up0")
    ours, theirs = make_plan("torch", mask, rules), make_plan("spconv", mask, rules)
    features = torch.randn(ours.sites.count, 8, generator=generator)
    weight, bias = torch.randn(9, 8, 8, generator=generator), torch.randn(8, generator=generator)
    with theirs.running():  # one thread on CPU, where spconv is only correct that way
        for rule in ("subm0", "subm0_d2"):
            torch.testing.assert_close(ours.conv(rule, features, weight, bias),
                                       theirs.conv(rule, features, weight, bias), rtol=1e-4, atol=1e-4)
        down_ours, down_theirs = ours.conv("down0", features, weight, None), theirs.conv("down0", features, weight, None)
        assert down_ours.shape == down_theirs.shape
        # coarse rows may come in another order; the inverse brings both back onto `sites`' order
        torch.testing.assert_close(ours.conv("up0", down_ours, weight, bias),
                                   theirs.conv("up0", down_theirs, weight, bias), rtol=1e-4, atol=1e-4)


class OneLevelPlan:
    """Submanifold rules on one site set, whatever level they name: enough to run one block."""

    def __init__(self, sites: Sites):
        self.sites = sites

    def conv(self, rule, features, weight, bias):
        kind, _, dilation = parse_rule(rule)
        assert kind == "subm", rule
        book = Rulebook.from_neighbours(submanifold_map(self.sites, dilation), self.sites.count)
        return gather_conv(features, book, weight, bias)


def test_layer4_downsample_runs_on_conv1s_dilation_2_rulebook():
    """spconv 1.x reused conv1's dilation-2 rulebook for layer4.0's downsample (shared indice key):
    the block must equal dense convolutions with the downsample dilated too."""
    from sparsemat.engine.model.refiner import SparseResNet18

    generator = torch.Generator().manual_seed(5)
    block = SparseResNet18().layer4[0].double().eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.05)
    sites = Sites.from_mask(torch.rand(12, 14, generator=generator) < 0.5)
    features = torch.randn(sites.count, 256, generator=generator, dtype=torch.float64)

    def dense_conv(conv, x, dilation):
        return F.conv2d(x, as_oihw(conv.weight), conv.bias, padding=dilation, dilation=dilation)

    def at(x):  # back to site features, so inactive sites are zero for the next convolution
        return at_sites(x, sites)

    with torch.no_grad():
        x = dense_features(sites, features)
        inner = torch.relu(block.bn1(at(dense_conv(block.conv1, x, 2))))
        main = block.bn2(at(dense_conv(block.conv2, dense_features(sites, inner), 1)))
        residual = block.downsample[1](at(dense_conv(block.downsample[0], x, 2)))
        expected = torch.relu(main + residual)
        torch.testing.assert_close(block(features, OneLevelPlan(sites)), expected)


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed (pip install '.[spconv]')")
def test_spconv_modules_are_built_once_per_weight_and_again_when_it_changes(seed1_model, reference):
    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import backends
    from sparsemat.engine.model.refiner import SparseConv

    matter = Matter(seed1_model, backend="spconv")
    frame = torch.from_numpy(reference["frames"][0].astype(np.float32) / 255)
    convs = [m for m in seed1_model.shm.modules() if isinstance(m, SparseConv) and m.rule]

    def modules():
        return {id(conv.weight): id(backends._SPCONV_MODULES[id(conv.weight)][1]) for conv in convs}

    first_alpha = matter.matte(frame)[0]
    built = modules()
    assert len(built) == len(convs)
    assert torch.equal(matter.matte(frame)[0], first_alpha) and modules() == built, "reused on the next frame"
    changed = convs[0].weight
    with torch.no_grad():
        changed.mul_(1.0)  # an in-place update, as fine-tuning makes: same values, new version
    matter.matte(frame)
    after = modules()
    assert after[id(changed)] != built[id(changed)]
    assert all(after[key] == value for key, value in built.items() if key != id(changed))
