"""Inference rules where the published code breaks: empty bands, over-budget cascades, size changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemat.engine.matting import Matter, normalize
from sparsemat.engine.validation import FrameError, prior_input_size


@pytest.fixture(scope="module")
def frames(reference):
    return [torch.from_numpy(frame).float() / 255 for frame in reference["frames"]]


@pytest.mark.parametrize("size, expected", [((256, 384), (512, 768)), ((2160, 3840), (512, 928)),
                                            ((1080, 1920), (512, 928)), ((300, 200), (768, 512))])
def test_prior_input_size_rule(size, expected):
    assert prior_input_size(*size) == expected


@pytest.mark.parametrize("size", [(3, 700), (700, 3), (100, 801)])
def test_frame_too_elongated_for_the_prior_network_is_refused(size):
    with pytest.raises(FrameError, match="too elongated for the prior network.*over 4096 px"):
        prior_input_size(*size)


def test_frames_up_to_8_to_1_reach_the_prior_network(seed1_model):
    assert prior_input_size(100, 800) == (512, 4096)
    with pytest.raises(FrameError, match="the frame is 200x20"):  # 10:1
        Matter(seed1_model).matte(torch.full((20, 200, 3), 0.5))


def test_frame_without_uncertain_pixels_is_the_prior(seed1_model, frames):
    certain = torch.ones(32, 48)
    alpha, _, stats = Matter(seed1_model).matte(frames[0], prior=certain)
    assert stats.active_pixels == 0 and torch.equal(alpha, torch.ones_like(alpha))


def test_static_frame_reuses_previous_alpha_without_refining(seed1_model, frames):
    matter = Matter(seed1_model)
    first, state, _ = matter.matte(frames[0])
    again, _, stats = matter.matte(frames[0].clone(), state)
    assert stats.reused and stats.active_pixels == 0 and stats.temporal_pixels == 0
    assert torch.equal(again, first)


def test_a_budget_given_with_the_frame_equals_a_matter_built_with_it(seed1_model, frames):
    """The engine keeps one Matter and passes each request's budget with the frame."""
    built = Matter(seed1_model, max_pixels=1000).matte(frames[0])
    passed = Matter(seed1_model).matte(frames[0], max_pixels=1000)
    assert built[2].mode == passed[2].mode == "rescale" and torch.equal(built[0], passed[0])
    with pytest.raises(ValueError, match="at least 64"):
        Matter(seed1_model).matte(frames[0], max_pixels=10)


def test_the_state_is_a_value_the_next_frame_never_changes(seed1_model, frames):
    matter = Matter(seed1_model)
    alpha, state, _ = matter.matte(frames[0])
    kept = state.alpha.clone()
    matter.matte(frames[1], state)
    assert torch.equal(state.alpha, kept) and torch.equal(alpha, kept[0, 0])


def test_budget_below_the_quarter_scale_band_still_gives_a_full_size_matte(seed1_model, frames):
    alpha, _, stats = Matter(seed1_model, max_pixels=1000).matte(frames[0])
    assert stats.mode == "rescale" and 0 < stats.active_pixels <= 1000
    assert alpha.shape == frames[0].shape[:2] and torch.isfinite(alpha).all()
    assert 0 <= float(alpha.min()) and float(alpha.max()) <= 1


def test_a_frame_over_budget_with_a_previous_state_is_computed_afresh_and_says_so(seed1_model, frames):
    matter = Matter(seed1_model, max_pixels=1000)
    _, state, _ = matter.matte(frames[0])
    alpha, _, stats = matter.matte(frames[1], state)
    assert stats.mode in ("cascade", "rescale") and not stats.reused
    assert torch.equal(alpha, matter.matte(frames[1])[0])  # the state changed nothing


def test_tiny_budget_is_refused(seed1_model):
    with pytest.raises(ValueError, match="at least 64"):
        Matter(seed1_model, max_pixels=10)


def test_frame_of_another_size_starts_a_new_stream(seed1_model, frames):
    matter = Matter(seed1_model)
    _, state, _ = matter.matte(frames[0])
    smaller = frames[1][:200, :300].contiguous()
    alpha, new_state, stats = matter.matte(smaller, state)
    assert not stats.reused and "new stream" in stats.note and "300x200" in stats.note
    alone, _, _ = matter.matte(smaller)
    assert torch.equal(alpha, alone) and new_state.size == (200, 300)


def test_prior_input_replaces_the_network_alpha(seed1_model, frames):
    prior = torch.zeros(64, 96)
    prior[16:48, 24:72] = 1.0
    alpha, _, stats = Matter(seed1_model).matte(frames[0], prior=prior)
    band_fraction = stats.spatial_pixels / alpha.numel()
    assert 0.05 < band_fraction < 0.6
    far_outside = alpha[:5, :5].numpy()
    assert np.all(far_outside == 0.0)


@pytest.mark.parametrize("shape", [(37, 53), (5, 4), (1, 60)])
def test_dilate_and_box_sum_equal_the_published_pooling_and_convolution(shape):
    import torch.nn.functional as F

    from sparsemat.engine.sparsity import box_sum, dilate

    generator = torch.Generator().manual_seed(sum(shape))
    mask = (torch.rand(1, 1, *shape, generator=generator) < 0.02).float()
    assert torch.equal(dilate(mask), F.max_pool2d(mask, 15, stride=1, padding=7))
    values = torch.rand(1, 1, *shape, generator=generator)
    torch.testing.assert_close(box_sum(values).float(), F.conv2d(values, torch.ones(1, 1, 9, 9), padding=4))


def test_normalize_is_the_published_formula_on_the_clipped_frame(frames):
    frame = frames[0] * 1.6 - 0.3  # values on both sides of [0, 1]
    published = ((frame.clamp(0, 1).flip(-1) - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0)
    assert torch.equal(normalize(frame), published)
    inside = frames[1]
    assert torch.equal(normalize(inside), ((inside.flip(-1) - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0))


def test_normalize_only_reads_the_frame(frames):
    frame = frames[0] * 2.0
    before = frame.clone()
    normalize(frame)
    assert torch.equal(frame, before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_frame_with_nan_or_infinity_is_refused_with_its_first_bad_pixel(seed1_model, frames, bad):
    frame = frames[0].clone()
    frame[7, 11, 2] = bad
    frame[9, 3, 0] = bad
    with pytest.raises(FrameError, match=r"2 NaN/infinite pixel values \(first at x=11, y=7\)"):
        Matter(seed1_model).matte(frame)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_prior_with_nan_or_infinity_is_refused_and_a_finite_one_is_clipped(seed1_model, frames, bad):
    prior = torch.zeros((8, 10))  # a small uncertain patch: a small band, a quick matte
    prior[2:5, 3:6] = 0.5
    prior[3, 4] = bad
    with pytest.raises(FrameError, match=r"prior has 1 NaN/infinite pixel values \(first at x=4, y=3\)"):
        Matter(seed1_model).matte(frames[0], prior=prior)
    prior[3, 4] = 7.0  # out of range, but finite: clipped as the published code clips its prior
    clipped = prior.clamp(0, 1)
    alpha = Matter(seed1_model).matte(frames[0], prior=prior)[0]
    assert torch.equal(alpha, Matter(seed1_model).matte(frames[0], prior=clipped)[0])
