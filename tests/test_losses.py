"""The training recipe's losses and band (docs/TRAINING.md), on cases whose answer is known by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemat.engine.losses import (CHARBONNIER_EPSILON, charbonnier, composition_loss, laplacian_l1,
                                     laplacian_pyramid, random_unknown_band, refiner_loss, unknown_band)


def step_edge(height=24, width=40, edge=20) -> np.ndarray:
    """Alpha 1 left of column ``edge``, 0 from it on, and one soft column at 30 in the background."""
    alpha = np.zeros((height, width), np.float32)
    alpha[:, :edge] = 1
    alpha[:, 30] = 0.5
    return alpha


def test_the_band_is_what_erosion_and_dilation_leave_between_them():
    band = unknown_band(step_edge(), kernel_size=3, iterations=1)
    # one pixel eroded off the foreground (column 19), one dilated into the background (column 20), and the
    # soft column with its neighbours (dilated); the rows agree as the edge is straight
    assert np.all(band == band[0])
    assert np.flatnonzero(band[0]).tolist() == [19, 20, 29, 30, 31]
    wider = unknown_band(step_edge(), kernel_size=3, iterations=3)
    assert np.flatnonzero(wider[12]).tolist() == [17, 18, 19, 20, 21, 22, 27, 28, 29, 30, 31, 32, 33]


def test_the_random_band_always_covers_the_soft_pixels_and_the_edge():
    rng = np.random.default_rng(0)
    alpha = np.zeros((16, 300), np.float32)  # wide enough for the widest band: 15 iterations of a 9 x 9 ellipse
    alpha[:, :100] = 1
    alpha[:, 150] = 0.5
    for _ in range(20):
        band = random_unknown_band(alpha, rng)
        assert np.all(band[:, [99, 100, 150]] == 1) and band[:, 0].sum() == 0 and band[:, -1].sum() == 0


def test_charbonnier_is_the_masked_sum_over_the_count_plus_one():
    prediction = torch.tensor([[[[0.0, 0.5, 1.0, 1.0]]]])
    target = torch.tensor([[[[0.0, 0.0, 0.25, 1.0]]]])
    mask = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    expected = (np.sqrt(CHARBONNIER_EPSILON) + np.sqrt(0.25 + CHARBONNIER_EPSILON)
                + np.sqrt(0.5625 + CHARBONNIER_EPSILON)) / 4
    assert charbonnier(prediction, target, mask).item() == pytest.approx(expected, rel=1e-6)


def test_the_laplacian_pyramid_sums_back_to_the_image_and_a_constant_only_shifts_its_residue():
    image = torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pyramid = laplacian_pyramid(image)
    assert len(pyramid) == 6 and pyramid[-1].shape[2:] == (2, 3)
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        up = band.new_zeros(band.shape)
        up[:, :, ::2, ::2] = rebuilt
        row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
        kernel = (row[:, None] * row[None, :] / 64)[None, None]
        rebuilt = band + torch.nn.functional.conv2d(torch.nn.functional.pad(up, (2,) * 4, mode="reflect"), kernel)
    torch.testing.assert_close(rebuilt, image)
    ones = torch.ones_like(image)
    # a constant error of 0.25 everywhere: every band-pass level is flat, the residue carries it
    assert laplacian_l1(image + 0.25, image, ones).item() == pytest.approx(0.25, abs=1e-9)
    assert laplacian_l1(image, image, ones).item() == 0


def test_composition_loss_is_zero_for_the_true_alpha_and_grows_with_its_error():
    generator = torch.Generator().manual_seed(5)
    foreground, background = torch.rand(2, 1, 3, 8, 8, generator=generator)
    alpha = torch.rand(1, 1, 8, 8, generator=generator)
    image = alpha * foreground + (1 - alpha) * background
    mask = torch.ones(1, 1, 8, 8)
    exact = composition_loss(alpha, image, foreground, background, mask).item()
    assert exact == pytest.approx(np.sqrt(CHARBONNIER_EPSILON) * 64 / 65, rel=1e-3)
    off = composition_loss(alpha + 0.1, image, foreground, background, mask).item()
    assert off == pytest.approx((0.1 * (foreground - background).abs()).sum().item() / (3 * 65), rel=1e-3)


def test_the_refiner_loss_upsamples_the_side_outputs_and_weighs_them_as_published():
    label = torch.full((1, 1, 64, 64), 0.5)  # flat: the side outputs upsample to it exactly
    mask = torch.ones_like(label)
    exact = [torch.full((1, 1, 64 // s, 64 // s), 0.5) for s in (4, 2, 1)] + [label]
    wrong_alpha = exact[:3] + [label + 0.1]
    wrong_side = [exact[0] + 0.1] + exact[1:]
    base = refiner_loss(exact, label, mask).item()
    # the alpha's error costs ten times a side output's: weights 1.0 and 0.1
    alpha_cost = refiner_loss(wrong_alpha, label, mask).item() - base
    side_cost = refiner_loss(wrong_side, label, mask).item() - base
    assert alpha_cost == pytest.approx(10 * side_cost, rel=1e-4) and side_cost > 0
    with pytest.raises(ValueError, match="expected 4 outputs"):
        refiner_loss([label], label, mask)
