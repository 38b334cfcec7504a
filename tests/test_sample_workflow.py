"""A new user's first minute: the sample clip, no checkpoint, a prior; previews; temporal reuse on a static shot."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from sparsemat.engine.imageio import read_alpha

SAMPLE = "python examples/make_sample_clip.py sample"
MAIN = "sparsemat matte sample/plate.%04d.png mattes/alpha.%04d.exr --prior sample/prior.%04d.exr"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    subprocess.run([sys.executable, str(REPO / "examples" / "make_sample_clip.py"), str(folder), "--frames", "3",
                    "--size", "320x180"], check=True, capture_output=True)
    return folder


def test_readme_starts_with_these_commands():
    readme = (REPO / "README.md").read_text()
    assert SAMPLE in readme and MAIN in readme


def test_main_command_without_a_checkpoint_mattes_the_sample_clip(sample, tmp_path):
    command = MAIN.replace("sample/", f"{sample}/").replace("mattes/", f"{tmp_path}/mattes/").split()[1:]
    result = run_cli(*command, env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 0, result.stderr
    assert f"mattes: {tmp_path}/mattes/alpha.%04d.exr" in result.stdout
    assert sorted(os.listdir(tmp_path / "mattes")) == ["alpha.0001.exr", "alpha.0002.exr", "alpha.0003.exr"]
    truth, ours = read_alpha(str(sample / "alpha.0002.exr")), read_alpha(str(tmp_path / "mattes" / "alpha.0002.exr"))
    assert ours.shape == truth.shape and np.abs(ours - truth).mean() < 0.05


def test_the_sample_clip_has_a_trimap_and_a_clean_plate_that_fit_its_truth(sample):
    from sparsemat.engine.imageio import read_rgb

    clean = read_rgb(str(sample / "clean.png"))
    for frame in (1, 2, 3):
        truth, trimap = (read_alpha(str(sample / f"{name}.{frame:04d}.{ext}")) for name, ext in
                         (("alpha", "exr"), ("trimap", "png")))
        assert set(np.unique(trimap)) == {0.0, np.float32(128 / 255), 1.0}
        assert np.all(np.round(truth[trimap == 1] * 255) == 255) and np.all(np.round(truth[trimap == 0] * 255) == 0)
        plate = read_rgb(str(sample / f"plate.{frame:04d}.png"))
        assert np.array_equal(plate[truth == 0], clean[truth == 0])  # the background, exactly, where nothing covers it


def test_a_trimap_with_the_prior_beats_the_prior_alone(sample, tmp_path):
    """The trimap's known pixels are exact and it bounds the band: on the sample clip the guided
    refiner with both is closer to the truth than with the prior alone."""
    errors = {}
    for name, options in (("prior", ()), ("both", ("--trimap", sample / "trimap.%04d.png"))):
        result = run_cli("matte", sample / "plate.%04d.png", tmp_path / name / "a.%04d.exr", "--prior",
                         sample / "prior.%04d.exr", "--quiet", *options, env={"SPARSEMAT_CHECKPOINT": ""})
        assert result.returncode == 0, result.stderr
        errors[name] = sum(np.abs(read_alpha(str(tmp_path / name / f"a.{frame:04d}.exr"))
                                  - read_alpha(str(sample / f"alpha.{frame:04d}.exr"))).sum() for frame in (1, 2, 3))
    assert errors["both"] < 0.9 * errors["prior"], errors


def test_preview_writes_a_four_tile_sheet(sample, tmp_path):
    import OpenImageIO as oiio

    result = run_cli("preview", sample / "plate.%04d.png", tmp_path / "sheet.png", "--prior", sample / "prior.%04d.exr",
                     "--frame", "2", "--width", "160", env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 0, result.stderr
    from sparsemat.engine.preview import CAPTION, LEGEND

    sheet = oiio.ImageBuf(str(tmp_path / "sheet.png"))
    tile = 90  # 160 wide at the clip's 320 x 180
    assert (sheet.spec().width, sheet.spec().height, sheet.spec().nchannels) == (320, 2 * (CAPTION + tile) + LEGEND, 3)
    pixels = sheet.get_pixels(oiio.FLOAT)
    masks_tile = pixels[2 * CAPTION + tile : 2 * (CAPTION + tile), 160:]  # the bottom right tile
    assert (masks_tile[..., 0] > masks_tile[..., 1] + 0.2).any()  # the band, in red
    assert (masks_tile[..., 2] > masks_tile[..., 1] + 0.2).any()  # changed pixels from frame 1, in blue


def test_static_shot_reuses_everything_and_equals_a_run_without_reuse(sample):
    from sparsemat.engine.imageio import read_rgb
    from sparsemat.engine.matting import Matter

    frame = torch.from_numpy(read_rgb(str(sample / "plate.0001.png")))
    prior = torch.from_numpy(read_alpha(str(sample / "prior.0001.exr")))
    matter = Matter(None)
    alone, state, first = matter.matte(frame, prior=prior)
    for _ in range(3):
        again, state, stats = matter.matte(frame.clone(), state, prior=prior)
        assert stats.reused and stats.active_pixels == 0 and first.active_pixels > 0
        assert torch.equal(again, alone)
