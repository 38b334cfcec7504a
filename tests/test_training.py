"""A few training steps of the refiner on a synthetic sample, through the recipe's loss, and the
patches training cuts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataclasses import replace

from sparsemat.engine.losses import VALIDATION_BAND, unknown_band
from sparsemat.engine.model import SparseMat
from sparsemat.engine.training import crop, crop_resize, patch_loss, whole_frame
from sparsemat.engine.recipe import Recipe
from sparsemat.engine.training_data import Example, published_patch


def synthetic_sample(height=96, width=128):
    """A soft-edged disc of one texture over another, with its true foreground and background."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    radius, centre_y, centre_x = 0.3125 * height, height / 2, 0.47 * width
    alpha = np.clip((radius - np.hypot(y - centre_y, x - centre_x)) / 4 + 0.5, 0, 1).astype(np.float32)
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
    frame, alpha, band, foreground, background = synthetic_sample()
    patch = replace(whole_frame(model, frame, alpha), band=band, foreground=foreground, background=background)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = patch_loss(model, patch)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(value, frozen[key]) for key, value in model.lpn.state_dict().items())


def test_a_sample_that_cannot_train_says_why(seed1_checkpoint):
    model = SparseMat.from_checkpoint(str(seed1_checkpoint))
    frame, alpha, band, _, _ = synthetic_sample()
    patch = whole_frame(model, frame, alpha)
    with pytest.raises(ValueError, match=r"the alpha is \(96, 64\), the image 96x128: .* must be the image's size"):
        patch_loss(model, replace(patch, alpha=alpha[:, :64]))
    with pytest.raises(ValueError, match="unknown band is empty"):
        patch_loss(model, replace(patch, band=torch.zeros_like(band)))


def test_a_box_of_a_map_is_sampled_where_it_lies():
    """A box on whole pixels of a map, sampled at its own size, is exactly that crop."""
    values = torch.arange(12 * 16, dtype=torch.float32).reshape(1, 1, 12, 16)
    box = (4 / 16, 2 / 12, 12 / 16, 8 / 12)
    assert torch.equal(crop_resize(values, box, (6, 8)), values[:, :, 2:8, 4:12])


def test_a_keyframe_crop_keeps_its_pixels_together_when_mirrored(seed1_model):
    frame, alpha, _, _, _ = synthetic_sample()
    patch = crop(whole_frame(seed1_model, frame, alpha), 10, 20, 40, flip=True)
    assert torch.equal(patch.image, frame[10:50, 20:60].flip(1))
    assert torch.equal(patch.alpha, alpha[10:50, 20:60].flip(1))
    assert patch.prior.shape == patch.band.shape == (40, 40)


def test_a_published_patch_covers_the_same_place_in_the_view_and_at_full_resolution():
    """The view's pixels inside the patch's box are the patch's image, downsampled: the prior the
    refiner gets for the patch is the prior of the same place."""
    frame, alpha, _, _, _ = synthetic_sample(480, 640)
    example = Example(frame.numpy(), alpha.numpy(), None, None)
    recipe = Recipe(rescale=240, crop=160, patch_crops=(200,), patch_size=100, flips=True)
    for seed in range(4):
        arrays = published_patch(example, recipe, np.random.default_rng(seed))
        assert arrays.view.shape == (160, 160, 3) and arrays.image.shape == (100, 100, 3)
        assert arrays.alpha.shape == arrays.band.shape == (100, 100) and arrays.band.any()
        seen = crop_resize(torch.from_numpy(arrays.view).permute(2, 0, 1)[None], arrays.box, (100, 100))
        assert float((seen[0].permute(1, 2, 0) - torch.from_numpy(arrays.image)).abs().mean()) < 0.02
