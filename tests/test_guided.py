"""The weight-free guided band refiner (engine/guided.py) and the sample clip it is measured on
(examples/make_sample_clip.py). Fast: small clips built in memory."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from sparsemat.engine import metrics
from sparsemat.engine.guided import PASSES, default_passes, refine_band, srgb_to_linear
from sparsemat.engine.imageio import read_alpha, read_rgb
from sparsemat.engine.sparsity import spatial_band


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_sample_clip", REPO / "examples" / "make_sample_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


clip_generator = _load_generator()

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(plate: np.ndarray, prior: np.ndarray):
    """(image (1, 3, H, W), prior upsampled as the engine does (1, 1, H, W), band (1, 1, H, W))."""
    image = torch.from_numpy(plate).permute(2, 0, 1)[None].contiguous()
    up = F.interpolate(torch.from_numpy(prior)[None, None], size=plate.shape[:2], mode="bilinear",
                       align_corners=False)
    return image, up, spatial_band(up)


@pytest.fixture(scope="module")
def small_clip():
    """6 frames at 480x270: (image, upsampled prior, band, exact alpha) per frame."""
    frames = []
    for index in range(1, 7):
        plate, alpha, prior = clip_generator.make_frame(index, (480, 270), seed=0, frames=6)
        frames.append((*_inputs(plate, prior), alpha))
    return frames


@pytest.fixture(scope="module")
def frame():
    plate, alpha, prior = clip_generator.make_frame(2, (481, 271), seed=3, frames=6)
    return _inputs(plate, prior)


# ----------------------------------------------------------------------------- quality

def test_beats_the_upsampled_prior_on_the_sample_clip(small_clip):
    """Composed as SparseMat composes (refined in the band, prior elsewhere), the refinement is
    better than the bilinearly upsampled prior on SAD, MSE and gradient error, and no worse on dtSSD."""
    errors = {"prior": [], "guided": []}
    mattes = {"prior": [], "guided": []}
    gts = []
    for image, up, band, alpha in small_clip:
        refined = refine_band(image, up, band)
        composed = torch.where(band > 0, refined, up)
        for name, matte in (("prior", up), ("guided", composed)):
            matte = matte[0, 0].numpy()
            errors[name].append((metrics.sad(matte, alpha), metrics.mse(matte, alpha),
                                 metrics.gradient_error(matte, alpha)))
            mattes[name].append(matte)
        gts.append(alpha)
    prior, guided = np.mean(errors["prior"], axis=0), np.mean(errors["guided"], axis=0)
    for k, name in enumerate(("SAD", "MSE", "Grad")):
        assert guided[k] < prior[k], f"{name}: guided {guided[k]:.4g} is not below the prior's {prior[k]:.4g}"
    assert metrics.dtssd(mattes["guided"], gts) <= metrics.dtssd(mattes["prior"], gts)


# ----------------------------------------------------------------------------- contract

def test_outside_the_band_is_the_prior_exactly_and_inside_it_changes(frame):
    image, up, band = frame
    out = refine_band(image, up, band)
    assert out.shape == up.shape and out.dtype == up.dtype
    assert torch.equal(out[band == 0], up[band == 0])
    assert bool(torch.isfinite(out).all()) and not torch.equal(out[band > 0], up[band > 0])


def test_empty_band_returns_the_prior(frame):
    image, up, band = frame
    out = refine_band(image, up, torch.zeros_like(band))
    assert torch.equal(out, up) and out is not up


def test_a_constant_prior_stays_constant_whatever_the_plate(frame):
    """Band everywhere (no certain pixel: every window has only the floor weight) and a flat 0.5 prior:
    alpha has no covariance with any colour, so every window fits A = 0, b = 0.5, and the snap
    stretch keeps 0.5."""
    image, up, band = frame
    out = refine_band(image, torch.full_like(up, 0.5), torch.ones_like(band))
    assert float((out - 0.5).abs().max()) <= 1e-6


def test_a_flat_plate_carries_no_colour_information():
    """On a flat plate every window is degenerate (A = 0): the result depends on the prior alone,
    not on the plate's colour, and stays finite."""
    prior = torch.zeros(1, 1, 40, 70)
    prior[..., 10:30, 20:50] = 1.0
    prior = F.avg_pool2d(F.pad(prior, (3, 3, 3, 3), mode="replicate"), 7, 1)
    band = spatial_band(prior)
    grey = refine_band(torch.full((1, 3, 40, 70), 0.5), prior, band)
    red = torch.zeros(1, 3, 40, 70)
    red[:, 0] = 0.8
    assert bool(torch.isfinite(grey).all()) and not torch.equal(grey, prior)
    for other in (torch.full((1, 3, 40, 70), 0.1), red):
        assert torch.equal(refine_band(other, prior, band), grey)


def test_half_precision_prior_keeps_its_dtype(frame):
    image, up, band = frame
    out = refine_band(image.half(), up.half(), band)
    assert out.dtype == torch.float16
    assert torch.equal(out[band == 0], up.half()[band == 0])


def test_rejects_bad_shapes_and_passes(frame):
    image, up, band = frame
    with pytest.raises(ValueError, match="image"):
        refine_band(image[:, :1], up, band)
    with pytest.raises(ValueError, match="prior"):
        refine_band(image, up[..., 1:], band)
    with pytest.raises(ValueError, match="band"):
        refine_band(image, up, band[0])
    with pytest.raises(ValueError, match="multiple"):
        refine_band(image, up, band, passes=((6, 4),))
    with pytest.raises(ValueError, match="snap"):
        refine_band(image, up, band, snap=0.5)


def test_default_passes_scale_with_the_frame():
    assert default_passes(1080, 1920) == PASSES
    assert default_passes(2160, 3840) == PASSES
    assert default_passes(270, 480) == tuple((r // 2, s // 2) for r, s in PASSES)
    assert default_passes(4320, 7680) == tuple((r * 2, s * 2) for r, s in PASSES)
    for size in ((8, 8), (100, 30), (5000, 9000)):
        for radius, step in default_passes(*size):
            assert step >= 1 and radius >= step and radius % step == 0 and 64 % step == 0


# ----------------------------------------------------------------------------- tiling

@pytest.mark.parametrize("tile", [16, 32, 128])
def test_the_tile_size_does_not_change_the_result(frame, tile):
    """Tiles are only a way to skip work: odd frame sizes (tiles cut by the edge) included."""
    image, up, band = frame
    passes = ((16, 8), (8, 4), (4, 2), (2, 1))
    reference = refine_band(image, up, band, passes=passes)
    assert torch.allclose(refine_band(image, up, band, passes=passes, tile=tile), reference, atol=1e-5)


def _dense_reference(image, prior, band, passes, eps=1e-5, power=8, floor=0.01, snap=0.05):
    """The same algorithm on the whole frame, float64, written plainly (sizes divisible by the steps)."""
    guide = srgb_to_linear(image.double().clone())
    prior = prior.double()
    alpha = prior

    def box(x, r):  # window sums, zeros outside the frame
        return F.avg_pool2d(x, 2 * r + 1, 1, r, count_include_pad=True) * (2 * r + 1) ** 2

    for index, (radius, step) in enumerate(passes):
        r = radius // step
        g, p = F.avg_pool2d(guide, step), F.avg_pool2d(alpha, step)
        w = floor + (2 * p - 1).abs() ** power
        total = box(w, r)
        mean = lambda x: box(w * x, r) / total  # noqa: E731
        mu, mp = mean(g), mean(p)
        cov = mean(g * p) - mu * mp
        sigma = torch.stack([torch.cat([mean(g[:, i:i + 1] * g[:, j:j + 1]) - mu[:, i:i + 1] * mu[:, j:j + 1]
                                        for j in range(3)], 1) for i in range(3)], 1)  # (1, 3, 3, h, w)
        sigma = sigma.permute(0, 3, 4, 1, 2) + eps * torch.eye(3, dtype=torch.float64)
        a = torch.linalg.solve(sigma, cov.permute(0, 2, 3, 1)[..., None])[..., 0].permute(0, 3, 1, 2)
        b = mp - (a * mu).sum(1, keepdim=True)
        count = box(torch.ones_like(b), r)
        coefficients = torch.cat([box(a, r), box(b, r)], 1) / count
        coefficients = F.interpolate(coefficients, scale_factor=step, mode="bilinear", align_corners=False)
        q = (coefficients[:, :3] * guide).sum(1, keepdim=True) + coefficients[:, 3:]
        if index == len(passes) - 1:
            q = (q - snap) / (1 - 2 * snap)
        alpha = torch.where(band > 0, q.clamp(0, 1), prior)
    return alpha


def test_matches_a_dense_whole_frame_implementation():
    plate, _, prior = clip_generator.make_frame(4, (384, 256), seed=1, frames=6)
    image, up, band = _inputs(plate, prior)
    passes = ((16, 8), (8, 4), (4, 2), (2, 1))
    reference = _dense_reference(image, up, band, passes)
    out = refine_band(image, up, band, passes=passes)
    assert torch.allclose(out.double(), reference, atol=1e-5), float((out.double() - reference).abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_device(frame, device):
    image, up, band = frame
    out = refine_band(image.to(device), up.to(device), band.to(device))
    assert out.device.type == device
    assert torch.allclose(out.cpu(), refine_band(image, up, band), atol=1e-4)


# ----------------------------------------------------------------------------- the sample clip

def test_sample_frame_is_composited_in_linear_light():
    width, height = 160, 96
    plate, alpha, prior = clip_generator.make_frame_linear(3, (width, height), seed=0, frames=6)
    background = clip_generator.background(height, width, 0)
    assert plate.shape == (height, width, 3) and alpha.shape == (height, width)
    assert prior.shape == (height // 8, width // 8)
    clear = alpha == 0
    assert clear.any() and np.allclose(plate[clear], background[clear])
    assert ((alpha > 0) & (alpha < 1)).mean() > 0.02  # plenty of semi-transparency
    encoded, alpha_again, prior_again = clip_generator.make_frame(3, (width, height), seed=0, frames=6)
    assert np.array_equal(alpha, alpha_again) and np.array_equal(prior, prior_again)
    assert np.allclose(encoded, clip_generator.srgb_encode(plate))
    assert 0.0 <= float(encoded.min()) and float(encoded.max()) <= 1.0


def test_sample_clip_moves_over_a_static_background():
    first, alpha1, _ = clip_generator.make_frame(1, (160, 96), seed=0, frames=6)
    second, alpha2, _ = clip_generator.make_frame(2, (160, 96), seed=0, frames=6)
    unchanged = (first == second).all(-1)
    assert 0.2 < unchanged.mean() < 0.95
    assert not np.array_equal(alpha1, alpha2)


def test_sample_clip_script_writes_readable_frames(tmp_path):
    assert clip_generator.main([str(tmp_path), "--frames", "2", "--size", "96x64", "--seed", "1"]) == 0
    for index in (1, 2):
        plate = read_rgb(str(tmp_path / f"plate.{index:04d}.png"))
        alpha = read_alpha(str(tmp_path / f"alpha.{index:04d}.exr"))
        prior = read_alpha(str(tmp_path / f"prior.{index:04d}.exr"))
        assert plate.shape == (64, 96, 3) and alpha.shape == (64, 96) and prior.shape == (8, 12)
        expected_plate, expected_alpha, expected_prior = clip_generator.make_frame(index, (96, 64), seed=1, frames=2)
        assert np.abs(plate - expected_plate).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(alpha, expected_alpha) and np.array_equal(prior, expected_prior)
        assert np.array_equal(np.round(read_alpha(str(tmp_path / f"trimap.{index:04d}.png")) * 255),
                              clip_generator.make_trimap(expected_alpha))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "alpha.0001.exr", "alpha.0002.exr", "clean.png", "plate.0001.png", "plate.0002.png", "prior.0001.exr",
        "prior.0002.exr", "trimap.0001.png", "trimap.0002.png"]
