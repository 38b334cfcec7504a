"""Training needs gradients through the sparse convolutions: each kind (submanifold, dilated,
strided, inverse) against the dense convolution it equals on the same active sites, forward and
backward, in float64, through the torch backend's rulebooks exactly as the refiner runs them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsemat.engine.model.backends import TorchPlan
from sparsemat.engine.model.sparse import site_levels


def masks():
    generator = torch.Generator().manual_seed(3)
    yield "sparse 13x16", torch.rand(13, 16, generator=generator) < 0.35
    yield "full 12x15", torch.ones(12, 15, dtype=torch.bool)  # every neighbour present: the products-first path


def scattered(features: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
    dense = features.new_zeros(shape[0], shape[1], features.shape[1])
    return dense.index_put((coords[:, 0], coords[:, 1]), features).permute(2, 0, 1).unsqueeze(0)


def at_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    return dense[0][:, coords[:, 0], coords[:, 1]].T


def dense_equivalent(rule, features, weight, bias, fine, coarse):
    """The dense convolution a sparse rule equals at its output sites; weight (K, C_in, C_out) as
    (C_out, C_in, 3, 3) with k = ky * 3 + kx."""
    kernel = weight.reshape(3, 3, weight.shape[1], weight.shape[2]).permute(3, 2, 0, 1)
    if rule.startswith("subm"):
        dilation = 2 if rule.endswith("_d2") else 1
        dense = F.conv2d(scattered(features, fine.coords, fine.shape), kernel, bias, padding=dilation, dilation=dilation)
        return at_sites(dense, fine.coords)
    if rule.startswith("down"):
        dense = F.conv2d(scattered(features, fine.coords, fine.shape), kernel, bias, stride=2, padding=1)
        return at_sites(dense, coarse.coords)
    extra = [fine.shape[i] - (2 * coarse.shape[i] - 1) for i in range(2)]
    dense = F.conv_transpose2d(scattered(features, coarse.coords, coarse.shape), kernel.transpose(0, 1), bias,
                               stride=2, padding=1, output_padding=extra)
    return at_sites(dense, fine.coords)


@pytest.mark.parametrize("channels", [(5, 3), (3, 5)], ids=["narrowing", "widening"])
@pytest.mark.parametrize("rule", ["subm0", "subm0_d2", "down0", "up0"])
def test_gradients_of_each_sparse_convolution_equal_the_dense_ones(rule, channels):
    c_in, c_out = channels
    for name, mask in masks():
        plan = TorchPlan(mask, [rule])
        fine, coarse = site_levels(mask, 1)
        n_in = coarse.count if rule.startswith("up") else fine.count
        generator = torch.Generator().manual_seed(7)
        leaves = [torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
                  for shape in ((n_in, c_in), (9, c_in, c_out), (c_out,))]
        sparse = plan.conv(rule, *leaves)
        dense = dense_equivalent(rule, *leaves, fine, coarse)
        torch.testing.assert_close(sparse, dense, msg=f"{rule} forward, {name}")
        cotangent = torch.randn(sparse.shape, generator=generator, dtype=torch.float64)
        sparse_grads = torch.autograd.grad(sparse, leaves, cotangent)
        dense_grads = torch.autograd.grad(dense, leaves, cotangent)
        for what, ours, reference in zip(("features", "weight", "bias"), sparse_grads, dense_grads):
            assert ours.abs().sum() > 0, f"{rule} {what}: no gradient at all, {name}"
            torch.testing.assert_close(ours, reference, msg=f"{rule} gradient of the {what}, {name}")


def test_the_refiner_trains_on_its_sites_with_the_side_outputs(seed1_checkpoint):
    """Batch norm over the site features in training mode, gradients to every parameter of the
    refiner (the side-output heads included), and a few Adam steps bring its alphas, at the full
    resolution and the side outputs' levels, towards a target."""
    from sparsemat.engine.model import SparseMat

    refiner = SparseMat.from_checkpoint(str(seed1_checkpoint)).shm.double().train()
    generator = torch.Generator().manual_seed(11)
    mask = torch.rand(40, 56, generator=generator) < 0.3
    plan = TorchPlan(mask, refiner.rules)
    sites = site_levels(mask, 3)
    inputs = torch.rand(plan.sites.count, 4, generator=generator, dtype=torch.float64) * 2 - 1
    context = torch.rand(1, 32, 5, 7, generator=generator, dtype=torch.float64)
    prior = torch.rand(1, 1, 40, 56, generator=generator, dtype=torch.float64)
    targets = [(sites[level].coords[:, 0] + sites[level].coords[:, 1]) % 2 * 0.8 + 0.1 for level in (0, 2, 1, 0)]

    def loss():
        alpha, sides = refiner(inputs, plan, context, prior, side_outputs=True)
        assert [len(side) for side in sides] == [sites[2].count, sites[1].count, sites[0].count]
        return sum(weight * (output - target.double()).abs().mean()
                   for weight, output, target in zip((1.0, 0.1, 0.1, 0.1), (alpha, *sides), targets))

    loss().backward()
    for name, parameter in refiner.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"{name} gets no gradient"
    optimiser = torch.optim.Adam(refiner.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
        losses.append(value.item())
    assert losses[-1] < 0.7 * losses[0], losses
