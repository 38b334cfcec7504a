"""Foreground colours: the subject unmixed from the background, premultiplied, ready to merge."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from sparsemat.engine.foreground import estimate_foreground

sys.path.insert(0, str(REPO / "examples"))

from make_sample_clip import background, make_frame_linear, srgb_encode  # noqa: E402

SIZE = (480, 270)


def composite_errors(plate, truth, matte, foreground, new_background):
    """Mean |error| of the composite over ``new_background`` with ``matte`` and this ``foreground``
    (straight colour), and with the plate times the matte (the baseline), against the exact one,
    ``truth F + (1 - truth) new`` = ``plate - (1 - truth) old + (1 - truth) new``, over the pixels
    either alpha holds partial."""
    t, m = truth[..., None], matte[..., None]
    old = np.asarray(background(SIZE[1], SIZE[0], 0))
    exact = plate - (1 - t) * old + (1 - t) * new_background
    ours = m * foreground + (1 - m) * new_background
    baseline = m * plate + (1 - m) * new_background
    partial = ((truth > 0) & (truth < 1)) | ((matte > 0) & (matte < 1))
    return np.abs(ours - exact)[partial].mean(), np.abs(baseline - exact)[partial].mean()


def test_the_unmixed_foreground_composites_better_than_the_plate_times_alpha():
    plate, alpha, _ = make_frame_linear(5, SIZE)
    foreground = estimate_foreground(torch.from_numpy(plate).permute(2, 0, 1)[None],
                                     torch.from_numpy(alpha)[None, None])[0].permute(1, 2, 0).numpy()
    new = np.zeros_like(plate)
    new[..., 1] = 0.5  # a green the old background never had
    ours, baseline = composite_errors(plate, alpha, alpha, foreground, new)
    assert ours < 0.7 * baseline, (ours, baseline)
    assert foreground.min() >= 0 and foreground.max() <= plate.max()


def test_matte_writes_premultiplied_foregrounds_the_compositor_can_merge(tmp_path):
    """The command line with the exact alpha as the prior (the guided refiner refines it): the
    foreground EXR is RGBA, premultiplied, its A the matte, and merged over a new background it
    is closer to the exact composite than the plate times the matte is."""
    from sparsemat.engine.imageio import read_alpha, write_alpha
    from sparsemat.plugin import exr

    import OpenImageIO as oiio

    plate, alpha, _ = make_frame_linear(5, SIZE)
    out = oiio.ImageOutput.create(str(tmp_path / "p.0001.exr"))
    assert out.open(str(tmp_path / "p.0001.exr"), oiio.ImageSpec(SIZE[0], SIZE[1], 3, oiio.FLOAT))
    assert out.write_image(plate) and out.close()
    write_alpha(str(tmp_path / "prior.0001.exr"), alpha)
    result = run_cli("matte", tmp_path / "p.%04d.exr", tmp_path / "a.%04d.exr", "--prior", tmp_path / "prior.%04d.exr",
                     "--foreground", tmp_path / "fg.%04d.exr", "--quiet", env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 0, result.stderr
    pixels, names = exr.read(str(tmp_path / "fg.0001.exr"), ("R", "G", "B", "A"))
    assert sorted(names) == ["A", "B", "G", "R"]
    matte = read_alpha(str(tmp_path / "a.0001.exr"))
    assert np.array_equal(pixels[..., 3], matte)
    inside = matte == 1
    assert np.allclose(pixels[inside][:, :3], plate[inside], atol=1e-6)  # the plate itself inside the matte
    assert np.all(pixels[matte == 0][:, :3] == 0)
    straight = np.where(matte[..., None] > 0, pixels[..., :3] / np.maximum(matte[..., None], 1e-12), 0)
    new = np.zeros_like(plate)
    new[..., 1] = 0.5
    ours, baseline = composite_errors(plate, alpha, matte, straight, new)
    assert ours < 0.95 * baseline, (ours, baseline)  # the matte's own errors weigh on both


@pytest.mark.parametrize("options, message", [
    (("--foreground", "{tmp}/fg.%04d.png"), r"--foreground must end in \.exr"),
    (("--foreground", "{tmp}/p.%04d.exr"), r"--foreground would overwrite the input file .*p\.0001\.exr"),
    (("--foreground", "{tmp}/a.%04d.exr"), "--foreground and OUTPUT name the same files"),
    (("--foreground", "{tmp}/fg.exr"), "INPUT and --foreground must both be sequence patterns"),
])
def test_the_command_line_refuses_foregrounds_it_cannot_write(tmp_path, options, message):
    plate, alpha, _ = make_frame_linear(1, SIZE)
    from conftest import write_rgb

    write_rgb(tmp_path / "p.0001.exr", plate)
    result = run_cli("matte", tmp_path / "p.%04d.exr", tmp_path / "a.%04d.exr", "--prior", tmp_path / "p.%04d.exr",
                     *(option.format(tmp=tmp_path) for option in options), env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "a.0001.exr").exists()


def test_the_preview_shows_the_foreground_without_the_old_backgrounds_fringe(tmp_path):
    """A red disc with a soft 6 px edge over pure green: in the preview's checkerboard tile the
    edge carries less green than the plate times the alpha would (from the sheet's own plate and
    alpha tiles)."""
    import OpenImageIO as oiio

    from conftest import write_rgb
    from sparsemat.engine import preview
    from sparsemat.engine.imageio import write_alpha

    height, width = SIZE[1], SIZE[0]
    y, x = np.mgrid[:height, :width]
    alpha = np.clip((70.5 - np.hypot(y - height / 2, x - width / 2)) / 6.0, 0, 1).astype(np.float32)
    linear = alpha[..., None] * np.array([0.8, 0.05, 0.05]) + (1 - alpha[..., None]) * np.array([0.05, 0.8, 0.05])
    write_rgb(tmp_path / "p.png", np.round(srgb_encode(linear) * 255).astype(np.uint8))
    write_alpha(str(tmp_path / "prior.png"), alpha)
    result = run_cli("preview", tmp_path / "p.png", tmp_path / "sheet.png", "--prior", tmp_path / "prior.png",
                     "--width", str(width), env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 0, result.stderr
    sheet = oiio.ImageInput.open(str(tmp_path / "sheet.png")).read_image(oiio.FLOAT)

    def tile(row, column):
        top = row * (preview.CAPTION + height) + preview.CAPTION
        return sheet[top:top + height, column * width:(column + 1) * width]

    plate, matte, shown = tile(0, 0), tile(0, 1)[..., :1], tile(1, 0)
    checker = np.where(((y // preview.CHECKER) + (x // preview.CHECKER)) % 2 == 0, 0.8, 0.5)[..., None]
    baseline = matte * plate + (1 - matte) * checker
    edge = (matte[..., 0] > 0.2) & (matte[..., 0] < 0.8)
    excess = [(image[..., 1] - image[..., 0])[edge].mean() for image in (shown, baseline)]
    assert edge.sum() > 500 and excess[0] < excess[1] - 0.05, excess


def test_through_the_engine_the_foregrounds_are_the_in_process_ones(engine, seed1_checkpoint, tmp_path):
    """An EXR plate two stops over (values up to about 4): through a real engine (shared memory),
    the foreground files equal an in-process run's, the values over 1 kept."""
    from conftest import write_rgb
    from sparsemat.plugin import exr

    plate, _, _ = make_frame_linear(5, SIZE)
    write_rgb(tmp_path / "p.0001.exr", plate * 4)
    for name, options in (("local", ("--checkpoint", seed1_checkpoint)), ("engine", ("--engine", engine))):
        result = run_cli("matte", tmp_path / "p.%04d.exr", tmp_path / name / "a.%04d.exr", "--foreground",
                         tmp_path / name / "f.%04d.exr", "--quiet", *options)
        assert result.returncode == 0, result.stderr
    local, remote = (exr.read(str(tmp_path / name / "f.0001.exr"), ("R", "G", "B", "A"))[0] for name in ("local", "engine"))
    assert np.array_equal(local, remote)
    assert local[..., :3].max() > 1.5  # the plate's own values, not the display's clipped ones
