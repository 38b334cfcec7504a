"""A few training steps of the refiner on a synthetic sample, through the recipe's loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemat.engine.losses import VALIDATION_BAND, unknown_band
from sparsemat.engine.model import SparseMat
from sparsemat.engine.training import sample_loss


def synthetic_sample(height=96, width=128):
    """A soft-edged disc of one texture over another, with its true foreground and background."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    alpha = np.clip((30 - np.hypot(y - 48, x - 60)) / 4 + 0.5, 0, 1).astype(np.float32)
    foreground = np.stack([0.8 + 0.1 * np.sin(x / 5), 0.3 + 0.0 * x, 0.2 + 0.1 * np.cos(y / 7)], axis=-1)
    background = np.stack([0.1 + 0.0 * x, 0.5 + 0.2 * np.sin((x + y) / 9), 0.7 + 0.0 * y], axis=-1)
    frame = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    band = unknown_band(alpha, *VALIDATION_BAND)
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (frame, alpha, band, foreground,
                                                                                 background)]


def test_the_refiner_loss_falls_over_a_few_steps_with_the_prior_frozen(seed1_checkpoint):
    model = SparseMat.from_checkpoint(str(seed1_checkpoint))
    model.lpn.requires_grad_(False)
    model.shm.train()
    frozen = {key: value.clone() for key, value in model.lpn.state_dict().items()}
    optimiser = torch.optim.Adam(model.shm.parameters(), lr=1e-3)
    sample = synthetic_sample()
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = sample_loss(model, *sample)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(value, frozen[key]) for key, value in model.lpn.state_dict().items())


def test_a_sample_that_cannot_train_says_why(seed1_checkpoint):
    model = SparseMat.from_checkpoint(str(seed1_checkpoint))
    frame, alpha, band, _, _ = synthetic_sample()
    with pytest.raises(ValueError, match=r"the alpha is \(96, 64\) .* must be the frame's size"):
        sample_loss(model, frame, alpha[:, :64], band)
    with pytest.raises(ValueError, match="unknown band is empty"):
        sample_loss(model, frame, alpha, torch.zeros_like(band))
