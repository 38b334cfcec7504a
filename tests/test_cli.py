"""`sparsemat matte` on bad input: one clear message, the right exit code, nothing already written lost."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import run_cli, write_rgb
from sparsemat.engine.imageio import read_alpha


@pytest.fixture()
def clip(tmp_path, reference):
    """Frames 1001-1004 as EXR (scene-linear), cropped small to keep the runs quick."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for offset in range(4):
        linear = (reference["frames"][offset % 3][:96, :128].astype(np.float32) / 255) ** 2.2
        write_rgb(folder / f"plate.{1001 + offset}.exr", linear)
    return folder


def matte(clip, out, checkpoint, *options):
    return run_cli("matte", clip / "plate.####.exr", out / "alpha.####.exr", "--checkpoint", checkpoint,
                   "--device", "cpu", "--quiet", *options)


def written(out) -> list[str]:
    return sorted(name for name in os.listdir(out) if name.endswith(".exr")) if out.exists() else []


def test_sequence_is_matted_with_frame_numbers_kept_and_a_summary(clip, tmp_path, seed1_checkpoint):
    result = matte(clip, tmp_path / "out", seed1_checkpoint)
    assert result.returncode == 0, result.stderr
    assert written(tmp_path / "out") == [f"alpha.{n}.exr" for n in range(1001, 1005)]
    assert "4 frame(s) written, 0 skipped, 0 failed" in result.stdout
    assert "mean active fraction" in result.stdout and "s/frame" in result.stdout
    alpha = read_alpha(str(tmp_path / "out" / "alpha.1002.exr"))
    assert alpha.shape == (96, 128) and 0 <= alpha.min() and alpha.max() <= 1


def test_no_matching_frames(tmp_path, seed1_checkpoint):
    result = run_cli("matte", tmp_path / "none.%04d.exr", tmp_path / "a.%04d.exr", "--checkpoint", seed1_checkpoint)
    assert result.returncode == 2
    assert "no frames match" in result.stderr and "none.%04d.exr" in result.stderr


def test_missing_checkpoint_says_what_is_needed(clip, tmp_path):
    result = run_cli("matte", clip / "plate.####.exr", tmp_path / "a.####.exr", env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 2
    assert "--checkpoint PATH (or set SPARSEMAT_CHECKPOINT)" in result.stderr and "--prior PATTERN" in result.stderr


@pytest.mark.parametrize("seconds", ["-1", "inf", "soon"])
def test_exit_when_idle_must_be_seconds(seconds):
    result = run_cli("engine", "serve", "--exit-when-idle", seconds)
    assert result.returncode == 2 and "--exit-when-idle" in result.stderr


def test_corrupt_checkpoint_names_the_file(clip, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = matte(clip, tmp_path / "out", bad)
    assert result.returncode == 2 and "bad.pth cannot be read" in result.stderr


def test_truncated_frame_is_reported_and_the_others_are_done(clip, tmp_path, seed1_checkpoint):
    frame = clip / "plate.1002.exr"
    frame.write_bytes(frame.read_bytes()[:2000])
    result = matte(clip, tmp_path / "out", seed1_checkpoint)
    assert result.returncode == 1
    assert "plate.1002.exr" in result.stderr and "1 failed" in result.stdout
    assert written(tmp_path / "out") == ["alpha.1001.exr", "alpha.1003.exr", "alpha.1004.exr"]


def test_nan_pixels_are_reported_not_matted(clip, tmp_path, seed1_checkpoint):
    pixels = np.full((96, 128, 3), 0.2, dtype=np.float32)
    pixels[10, 20, 1] = np.nan
    write_rgb(clip / "plate.1003.exr", pixels)
    result = matte(clip, tmp_path / "out", seed1_checkpoint)
    assert result.returncode == 1
    assert "plate.1003.exr" in result.stderr and "NaN" in result.stderr
    assert "alpha.1003.exr" not in written(tmp_path / "out") and len(written(tmp_path / "out")) == 3


def test_frame_of_another_size_starts_a_new_stream_and_says_so(clip, tmp_path, seed1_checkpoint):
    write_rgb(clip / "plate.1003.exr", np.full((64, 80, 3), 0.3, dtype=np.float32))
    result = matte(clip, tmp_path / "out", seed1_checkpoint)
    assert result.returncode == 0, result.stderr
    assert "frame 1003" in result.stderr and "new stream" in result.stderr
    assert read_alpha(str(tmp_path / "out" / "alpha.1003.exr")).shape == (64, 80)


def test_unwritable_output_stops_the_run_and_keeps_earlier_frames(clip, tmp_path, seed1_checkpoint):
    out = tmp_path / "out"
    (out / "alpha.1003.exr").mkdir(parents=True)  # a folder where frame 1003 must go
    result = matte(clip, out, seed1_checkpoint)
    assert result.returncode == 1
    assert "cannot write frame 1003" in result.stderr
    assert written(out) == ["alpha.1001.exr", "alpha.1002.exr", "alpha.1003.exr"]  # the last is the folder
    assert (out / "alpha.1002.exr").is_file() and not any(n.startswith(".") for n in os.listdir(out))


def test_output_folder_that_cannot_be_created(clip, tmp_path, seed1_checkpoint):
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = matte(clip, tmp_path / "blocker" / "out", seed1_checkpoint)
    assert result.returncode == 1 and "cannot create the output folder" in result.stderr


def test_skip_existing_leaves_finished_frames(clip, tmp_path, seed1_checkpoint):
    out = tmp_path / "out"
    assert matte(clip, out, seed1_checkpoint, "--frames", "1001-1002").returncode == 0
    before = os.stat(out / "alpha.1001.exr").st_mtime_ns
    result = matte(clip, out, seed1_checkpoint, "--skip-existing")
    assert result.returncode == 0, result.stderr
    assert "2 frame(s) written, 2 skipped" in result.stdout
    assert os.stat(out / "alpha.1001.exr").st_mtime_ns == before
    assert len(written(out)) == 4


def test_png_output_and_frame_range(clip, tmp_path, seed1_checkpoint):
    result = run_cli("matte", clip / "plate.%04d.exr", tmp_path / "a.%04d.png", "--checkpoint", seed1_checkpoint,
                     "--frames", "1002-1003", "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".png")) == ["a.1002.png", "a.1003.png"]
    import OpenImageIO as oiio

    assert oiio.ImageInput.open(str(tmp_path / "a.1002.png")).spec().format == oiio.UINT16


def test_keyframe_interval_makes_chunked_runs_equal_one_run(clip, tmp_path, seed1_checkpoint):
    whole = matte(clip, tmp_path / "whole", seed1_checkpoint, "--keyframe-interval", "3")
    assert whole.returncode == 0, whole.stderr
    for chunk in ("1001-1002", "1003-1004"):
        result = matte(clip, tmp_path / "chunked", seed1_checkpoint, "--keyframe-interval", "3", "--frames", chunk)
        assert result.returncode == 0, result.stderr
    assert "1 pre-rolled" in result.stdout  # 1003 re-matted 1002 (a keyframe) first
    for frame in range(1001, 1005):
        ours = read_alpha(str(tmp_path / "chunked" / f"alpha.{frame}.exr"))
        assert np.array_equal(ours, read_alpha(str(tmp_path / "whole" / f"alpha.{frame}.exr"))), frame
    # without the pre-roll the chunk boundary shows: 1004 alone is not its temporal result
    alone = matte(clip, tmp_path / "alone", seed1_checkpoint, "--frames", "1004")
    assert alone.returncode == 0
    assert not np.array_equal(read_alpha(str(tmp_path / "alone" / "alpha.1004.exr")),
                              read_alpha(str(tmp_path / "whole" / "alpha.1004.exr")))
