"""Keyframe mattes as guidance: two artist mattes carried through a shot by its motion."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, run_cli
from sparsemat.engine.imageio import read_alpha, write_alpha
from sparsemat.engine.metrics import dtssd, sad

FRAMES = 12
KEYS = (1, FRAMES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The sample clip, 12 frames at 480 x 270 (its subject sways through the shot), with the exact
    mattes of frames 1 and 12 as the artist's keyframes."""
    folder = tmp_path_factory.mktemp("keyframes")
    subprocess.run([sys.executable, str(REPO / "examples" / "make_sample_clip.py"), str(folder), "--frames",
                    str(FRAMES), "--size", "480x270"], check=True, capture_output=True)
    for key in KEYS:
        write_alpha(str(folder / f"key.{key:04d}.exr"), read_alpha(str(folder / f"alpha.{key:04d}.exr")))
    return folder


def mattes(folder, frames=range(1, FRAMES + 1)):
    return [read_alpha(str(folder / f"a.{frame:04d}.exr")) for frame in frames]


def test_two_keyframes_beat_the_upsampled_prior_on_sad_and_dtssd(clip, tmp_path):
    """The issue's criterion on a 12-frame, 480 x 270 version of the clip (docs/QUALITY.md,
    "Guidance", has the 24-frame 1080p one): keyframes exact, the frames between better than the
    upsampled prior on SAD and dtSSD."""
    result = run_cli("matte", clip / "plate.%04d.png", tmp_path / "a.%04d.exr", "--keyframe-alpha",
                     clip / "key.%04d.exr", "--quiet", env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 0, result.stderr
    assert f"{FRAMES} frame(s) written, 0 skipped, 0 failed" in result.stdout
    ours, truth = mattes(tmp_path), [read_alpha(str(clip / f"alpha.{f:04d}.exr")) for f in range(1, FRAMES + 1)]
    for key in KEYS:  # a keyframe's matte is the answer
        assert np.array_equal(ours[key - 1], truth[key - 1])
    size = truth[0].shape
    upsampled = [F.interpolate(torch.from_numpy(read_alpha(str(clip / f"prior.{f:04d}.exr")))[None, None], size=size,
                               mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy() for f in range(1, FRAMES + 1)]
    between = slice(1, FRAMES - 1)
    ours_sad = np.mean([sad(p, g) for p, g in zip(ours[between], truth[between])])
    prior_sad = np.mean([sad(p, g) for p, g in zip(upsampled[between], truth[between])])
    assert ours_sad < prior_sad, (ours_sad, prior_sad)
    assert dtssd(ours, truth) < dtssd(upsampled, truth)


def test_a_chunk_between_keyframes_gives_the_whole_runs_files(clip, tmp_path):
    """A frame depends on its plate and its keyframes' only: frames 6-8 alone equal the same frames of a whole run."""
    for name, frames in (("whole", ()), ("chunk", ("--frames", "6-8"))):
        result = run_cli("matte", clip / "plate.%04d.png", tmp_path / name / "a.%04d.exr", "--keyframe-alpha",
                         f"1={clip / 'key.0001.exr'}", "--keyframe-alpha", f"{FRAMES}={clip / f'key.{FRAMES:04d}.exr'}",
                         "--quiet", *frames, env={"SPARSEMAT_CHECKPOINT": ""})
        assert result.returncode == 0, result.stderr
    for whole, chunk in zip(mattes(tmp_path / "whole", range(6, 9)), mattes(tmp_path / "chunk", range(6, 9))):
        assert np.array_equal(whole, chunk)


def test_a_frame_that_cannot_be_read_fails_alone(clip, tmp_path):
    """The frames either side of an unreadable plate still get their keyframes' mattes: the whole
    run's files, and the run says which frame failed and why."""
    import shutil

    plates = tmp_path / "plates"
    plates.mkdir()
    for frame in range(1, FRAMES + 1):
        shutil.copy(clip / f"plate.{frame:04d}.png", plates / f"plate.{frame:04d}.png")
    (plates / "plate.0006.png").write_bytes(b"not a png")
    result = run_cli("matte", plates / "plate.%04d.png", tmp_path / "a.%04d.exr", "--keyframe-alpha",
                     clip / "key.%04d.exr", "--frames", "5-7", "--quiet", env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 1
    assert "2 frame(s) written, 0 skipped, 1 failed" in result.stdout and "plate.0006.png" in result.stdout
    whole = tmp_path / "whole"
    assert run_cli("matte", clip / "plate.%04d.png", whole / "a.%04d.exr", "--keyframe-alpha", clip / "key.%04d.exr",
                   "--frames", "5,7", "--quiet", env={"SPARSEMAT_CHECKPOINT": ""}).returncode == 0
    for frame in (5, 7):
        assert np.array_equal(read_alpha(str(tmp_path / f"a.{frame:04d}.exr")), read_alpha(str(whole / f"a.{frame:04d}.exr")))
    assert not (tmp_path / "a.0006.exr").exists()


@pytest.mark.parametrize("options, message", [
    (("--keyframe-alpha", "40={clip}/key.0001.exr"), r"keyframe 40 is outside the plate's frames: .*plate\.0040\.png"),
    (("--keyframe-alpha", "3={clip}/missing.exr"), r"--keyframe-alpha file not found: .*missing\.exr"),
    (("--keyframe-alpha", "{clip}/nothing.%04d.exr"), r"--keyframe-alpha '.*nothing\.%04d\.exr' names no file"),
    (("--keyframe-alpha", "{clip}/key.0001.exr"), "--keyframe-alpha takes N=PATH or a sequence pattern"),
    (("--keyframe-alpha", "{clip}/key.%04d.exr", "--prior", "{clip}/prior.%04d.exr"),
     "--keyframe-alpha and --prior cannot be combined"),
])
def test_the_command_line_refuses_keyframes_it_cannot_use(clip, tmp_path, options, message):
    result = run_cli("matte", clip / "plate.%04d.png", tmp_path / "a.%04d.exr",
                     *(option.format(clip=clip) for option in options), env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "a.0001.exr").exists()
