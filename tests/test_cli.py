"""`sparsemat matte` on bad input: one clear message, the right exit code, nothing already written lost."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import run_cli, start_engine, stop_engine, write_rgb
from sparsemat.engine.imageio import read_alpha, write_alpha
from sparsemat.engine.model.backends import spconv_available


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
    assert "mean active fraction" in result.stdout and "s per written frame" in result.stdout
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


def write_priors(clip) -> None:
    for frame in range(1001, 1005):
        write_alpha(str(clip / f"prior.{frame}.exr"), np.full((96, 128), 0.5, dtype=np.float32))


def files(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


@pytest.mark.parametrize("output", ["plate.%04d.exr", "../clip/plate.####.exr", "prior.####.exr"])
def test_output_naming_input_files_is_refused_before_anything_is_done(clip, seed1_checkpoint, output):
    write_priors(clip)
    before = files(clip)
    result = run_cli("matte", clip / "plate.####.exr", clip / output, "--prior", clip / "prior.%04d.exr",
                     "--checkpoint", seed1_checkpoint, "--device", "cpu", "--quiet")
    assert result.returncode == 2, result.stderr
    assert "OUTPUT would overwrite the input file" in result.stderr and "1001.exr" in result.stderr
    assert files(clip) == before


def test_output_naming_a_plate_under_another_name_is_refused(clip, seed1_checkpoint, tmp_path):
    """One file under two names: on a case-insensitive file system (macOS, Windows shares) OUTPUT
    "Plate.####.exr" is the plates themselves. A hard link stands in for it here (ext4 is case-sensitive)."""
    out = tmp_path / "out"
    out.mkdir()
    os.link(clip / "plate.1002.exr", out / "alpha.1002.exr")
    before = (clip / "plate.1002.exr").read_bytes()
    result = run_cli("matte", clip / "plate.####.exr", out / "alpha.####.exr", "--checkpoint", seed1_checkpoint,
                     "--device", "cpu", "--quiet")
    assert result.returncode == 2 and "OUTPUT would overwrite the input file" in result.stderr, result.stderr
    assert (clip / "plate.1002.exr").read_bytes() == before


@pytest.mark.parametrize("command", ["matte", "preview"])
@pytest.mark.parametrize(("colourspace", "ocio", "message"), [("bogus", None, "unknown colourspace 'bogus'"),
                                                              ("ACEScg", "missing.ocio", "cannot load OCIO config")])
def test_bad_input_colourspace_is_refused_before_any_work(clip, tmp_path, seed1_checkpoint, command, colourspace,
                                                          ocio, message):
    output = tmp_path / "out" / ("alpha.####.exr" if command == "matte" else "sheet.png")
    result = run_cli(command, clip / "plate.####.exr", output, "--checkpoint", seed1_checkpoint, "--device", "cpu",
                     "--input-colorspace", colourspace, env={"OCIO": str(tmp_path / ocio)} if ocio else None)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(message) == 1 and "--input-colorspace" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_progress_counts_a_frame_once_it_is_finished(clip, tmp_path, seed1_model, monkeypatch):
    import tqdm

    from sparsemat.engine.job import MatteJob, run_job
    from sparsemat.engine.matting import InProcessMatter, Matter
    from sparsemat.engine.sequence import parse_pattern

    bars = []

    class RecordedBar(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", RecordedBar)
    frame = clip / "plate.1003.exr"
    frame.write_bytes(frame.read_bytes()[:2000])  # a failed frame counts as finished too
    out = tmp_path / "out"
    matter = InProcessMatter(Matter(seed1_model))
    seen = []  # (frames the bar shows done, mattes written) as each frame starts

    def matte(*args, **kwargs):
        seen.append((bars[0].n, len(written(out))))
        return matter(*args, **kwargs)

    job = MatteJob(parse_pattern(str(clip / "plate.####.exr")), parse_pattern(str(out / "alpha.####.exr")),
                   [1001, 1002, 1003, 1004])
    summary = run_job(job, matte)
    assert seen == [(0, 0), (1, 1), (3, 2)] and bars[0].n == 4
    assert "s per written frame" in summary.describe()


@pytest.mark.parametrize(("command", "option", "value"), [("matte", "--keyframe-interval", "-3"),
                                                          ("preview", "--frame", "-1")])
def test_negative_counts_are_refused_by_the_parser(clip, tmp_path, command, option, value):
    result = run_cli(command, clip / "plate.####.exr", tmp_path / "a.####.exr", option, value)
    assert result.returncode == 2 and f"argument {option}: expected an integer, 0 or more" in result.stderr


def test_no_output_folder_when_no_frame_is_written(clip, tmp_path, seed1_checkpoint):
    result = matte(clip, tmp_path / "out", seed1_checkpoint, "--frames", "2001-2002")  # not on disk
    assert result.returncode == 1 and "2 failed" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("through_engine", [False, True], ids=["in-process", "engine"])
def test_too_elongated_frame_fails_alone(clip, tmp_path, seed1_checkpoint, runtime, through_engine):
    write_rgb(clip / "plate.1003.exr", np.full((20, 200, 3), 0.3, dtype=np.float32))  # 10:1
    address = f"ipc://{tmp_path}/engine.sock"
    if through_engine:
        start_engine(address, seed1_checkpoint, runtime)
    try:
        result = matte(clip, tmp_path / "out", seed1_checkpoint, *(["--engine", address] if through_engine else []))
    finally:
        if through_engine:
            stop_engine(address, runtime)
    assert result.returncode == 1, result.stderr
    assert "cannot matte" in result.stderr and "plate.1003.exr" in result.stderr
    assert "200x20, too elongated for the prior network" in result.stderr
    assert written(tmp_path / "out") == ["alpha.1001.exr", "alpha.1002.exr", "alpha.1004.exr"]


@pytest.fixture()
def clip_from_zero(tmp_path, reference):
    """Frames 0-2 as PNG with a coarse prior each: preview needs no checkpoint with them."""
    folder = tmp_path / "zero"
    folder.mkdir()
    for frame in range(3):
        write_rgb(folder / f"plate.{frame:04d}.png", np.ascontiguousarray(reference["frames"][frame][:96, :128]))
        prior = np.zeros((24, 32), dtype=np.float32)
        prior[6:18, 8 + frame:24 + frame] = 1.0
        write_alpha(str(folder / f"prior.{frame:04d}.exr"), prior)
    return folder


def preview(folder, sheet, *options):
    return run_cli("preview", folder / "plate.%04d.png", sheet, "--prior", folder / "prior.####.exr",
                   "--device", "cpu", *options, env={"SPARSEMAT_CHECKPOINT": ""})


@pytest.mark.parametrize("options, first", [([], True), (["--frame", "0"], True), (["--frame", "1"], False)])
def test_preview_of_frame_0_and_after_it(clip_from_zero, tmp_path, options, first):
    """Frame 0 has no previous frame: a note says so, on the terminal and in the sheet's legend."""
    result = preview(clip_from_zero, tmp_path / "sheet.png", "--width", "200", *options)
    assert result.returncode == 0, result.stderr
    note = "frame 0 has no previous frame here: no changed pixels (blue)"
    assert (note in result.stderr) == first and (note in result.stdout) == first, result.stderr
    sheet = read_rgb_u8(tmp_path / "sheet.png")
    captions = 2 * 26 + 34  # two rows of caption strips and the legend
    assert sheet.shape == (2 * round(96 * 200 / 128) + captions, 400, 3)


def read_rgb_u8(path):
    import OpenImageIO as oiio

    return oiio.ImageInput.open(str(path)).read_image(oiio.UINT8)


def test_preview_labels_its_tiles_and_crops_at_full_resolution(clip_from_zero, tmp_path):
    whole = tmp_path / "whole.png"
    assert preview(clip_from_zero, whole, "--frame", "1", "--width", "128").returncode == 0
    crop = tmp_path / "crop.png"
    result = preview(clip_from_zero, crop, "--frame", "1", "--width", "128", "--crop", "32,16,32,24")
    assert result.returncode == 0 and "crop 32x24 at 32,16" in result.stdout
    sheet, full = read_rgb_u8(crop), read_rgb_u8(whole)
    # The crop is magnified 4x with square pixels: the plate tile's 4 x 4 blocks are one colour each.
    tile = sheet[26:26 + 96, :128].astype(int)
    assert (tile[::4, ::4] == tile[3::4, 3::4]).all() and not (tile == tile[0, 0]).all()
    # The caption strips carry text (bright pixels over the dark strip), the tiles' own pixels differ.
    assert (sheet[:26, :128] > 200).any() and (full[:26, :128] > 200).any()
    assert not np.array_equal(tile, full[26:26 + 96, :128])
    outside = preview(clip_from_zero, tmp_path / "bad.png", "--frame", "1", "--crop", "100,80,64,64")
    assert outside.returncode == 2 and "reaches past the frame, which is 128x96" in outside.stderr
    malformed = preview(clip_from_zero, tmp_path / "bad.png", "--crop", "1,2,3")
    assert malformed.returncode == 2 and "expected X,Y,W,H" in malformed.stderr


@pytest.mark.parametrize("broken", ["prior.0001.exr", "plate.0001.png"])
def test_preview_without_a_usable_previous_frame_draws_the_frame_without_changed_pixels(clip_from_zero, tmp_path,
                                                                                        broken):
    path = clip_from_zero / broken
    if broken.startswith("plate"):
        path.write_bytes(path.read_bytes()[:100])  # truncated
    else:
        path.unlink()
    result = preview(clip_from_zero, tmp_path / "sheet.png", "--frame", "2")
    assert result.returncode == 0, result.stderr
    assert "note: no changed pixels (blue) from frame 1" in result.stderr and broken in result.stderr
    assert (tmp_path / "sheet.png").is_file()


@pytest.mark.parametrize(("plate", "prior", "options", "message"), [
    ("plate.0000.png", "prior.####.exr", [], "INPUT and --prior must both be sequence patterns"),
    ("plate.0000.png", "prior.0000.exr", ["--frame", "1"], "--frame needs a sequence pattern"),
])
def test_preview_refuses_what_matte_refuses(clip_from_zero, tmp_path, plate, prior, options, message):
    result = run_cli("preview", clip_from_zero / plate, tmp_path / "sheet.png", "--prior", clip_from_zero / prior,
                     *options, env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "sheet.png").exists()


def test_preview_does_not_overwrite_a_plate(clip_from_zero):
    before = files(clip_from_zero)
    result = preview(clip_from_zero, clip_from_zero / "plate.0000.png")
    assert result.returncode == 2 and "OUTPUT would overwrite the input file" in result.stderr
    assert files(clip_from_zero) == before


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed")
def test_spconv_on_cpu_says_the_torch_backend_is_faster(clip, tmp_path, seed1_checkpoint):
    result = matte(clip, tmp_path, seed1_checkpoint, "--backend", "spconv", "--frames", "1001")
    assert result.returncode == 0, result.stderr
    assert "on CPU the torch backend is faster than spconv" in result.stderr
    assert "torch backend is faster" not in matte(clip, tmp_path / "t", seed1_checkpoint, "--frames", "1001").stderr
