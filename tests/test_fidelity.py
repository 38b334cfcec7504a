"""Fidelity to the published SparseMat: the fixture's references through the real command."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_faithful, make_checkpoint, run_cli, write_rgb
from sparsemat.engine.imageio import read_alpha


def write_png_clip(frames: np.ndarray, folder) -> str:
    """The fixture's uint8 RGB frames as 8-bit PNGs clip/f.0000.png ... (frame numbers from 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        write_rgb(folder / f"f.{index:04d}.png", frame)
    return str(folder / "f.%04d.png")


@pytest.fixture(scope="module")
def clip(reference, tmp_path_factory):
    return write_png_clip(reference["frames"], tmp_path_factory.mktemp("clip"))


def matte_clip(clip, out_dir, checkpoint, *options) -> list[np.ndarray]:
    result = run_cli("matte", clip, f"{out_dir}/a.%04d.exr", "--checkpoint", checkpoint, "--device", "cpu",
                     "--quiet", *options)
    assert result.returncode == 0, result.stderr
    return [read_alpha(f"{out_dir}/a.{i:04d}.exr") for i in range(3)]


@pytest.mark.parametrize("module_form", [False, True], ids=["plain", "module-wrapped"])
def test_single_frame_matches_reference(clip, reference, tmp_path, module_form):
    checkpoint = make_checkpoint(1, tmp_path / "ckpt.pth", module=module_form)
    alphas = matte_clip(clip, tmp_path / "out", checkpoint, "--no-temporal")
    assert_faithful(alphas[0], reference["ref_image"], "frame 0 alone")


def test_temporal_clip_matches_reference(clip, reference, seed1_checkpoint, tmp_path):
    alphas = matte_clip(clip, tmp_path / "out", seed1_checkpoint, "--temporal")
    for index, alpha in enumerate(alphas):
        assert_faithful(alpha, reference["ref_video"][index], f"video frame {index}")
    # the temporal path really is different from per-frame mattes
    assert np.abs(alphas[2] - reference["ref_image"]).mean() > 1e-3


def test_cascade_matches_reference(clip, reference, seed1_checkpoint, tmp_path):
    budget = int(reference["cascade_max_n_pixel"])
    alphas = matte_clip(clip, tmp_path / "out", seed1_checkpoint, "--no-temporal", "--max-pixels", budget)
    assert_faithful(alphas[0], reference["ref_cascade"], "cascade")
