"""`sparsemat train` and `sparsemat finetune` as a user runs them, on tiny synthetic data."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO, run_cli, write_rgb
from sparsemat.engine.imageio import read_alpha, write_alpha
from sparsemat.engine.model.checkpoint import read_published

# The recipe scaled down to 96 x 128 images, so that a step takes well under a second here.
SMALL = ["--rescale", "64", "--crop", "64", "--patch-crops", "48,64", "--patch-size", "64", "--batch", "2",
         "--device", "cpu", "--quiet"]


def disc(index: int, height: int = 96, width: int = 128):
    """A soft-edged disc of one texture over another: image, alpha, foreground, background."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    alpha = np.clip((26 + 3 * index - np.hypot(y - 48, x - 56 - 4 * index)) / 4 + 0.5, 0, 1).astype(np.float32)
    foreground = np.stack([0.8 + 0.1 * np.sin(x / 5), 0.3 + 0 * x, 0.2 + 0.1 * np.cos(y / 7)], axis=-1)
    background = np.stack([0.1 + 0 * x, 0.5 + 0.2 * np.sin((x + y) / 9), 0.7 + 0 * y], axis=-1)
    image = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    return [np.ascontiguousarray(a, dtype=np.float32) for a in (image, alpha, foreground, background)]


def eight_bit(rgb: np.ndarray) -> np.ndarray:
    return (rgb * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset folder (image/, alpha/, fg/, bg/ matched by name) of three discs."""
    root = tmp_path_factory.mktemp("dataset")
    for name in ("image", "alpha", "fg", "bg"):
        (root / name).mkdir()
    for index in range(3):
        image, alpha, foreground, background = disc(index)
        write_rgb(root / "image" / f"s{index}.png", eight_bit(image))
        write_alpha(str(root / "alpha" / f"s{index}.png"), alpha)
        write_rgb(root / "fg" / f"s{index}.png", eight_bit(foreground))
        write_rgb(root / "bg" / f"s{index}.png", eight_bit(background))
    return root


def train(*args):
    return run_cli("train", *map(str, args), *SMALL)


def in_process(*args) -> tuple[int, str]:
    """``sparsemat ARGS`` in this process, through the console script's own ``main`` (quicker than a
    new interpreter for checks that stop early): the exit code and what it wrote to stderr."""
    from sparsemat.engine.cli import main

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in args])
    return code, errors.getvalue()


def record(path) -> dict:
    return read_published(str(path))[1]


SCHEDULE = ["--epochs", "3", "--decay-every", "1", "--decay", "0.5", "--learning-rate", "1e-3"]


@pytest.fixture(scope="module")
def whole_run(dataset, tmp_path_factory, seed1_checkpoint):
    """Three epochs of two steps, the learning rate halved at each, validated at each epoch's end."""
    out = tmp_path_factory.mktemp("run") / "whole.pth"
    result = train(dataset, "--checkpoint", seed1_checkpoint, "--out", out, *SCHEDULE, "--validation", dataset)
    assert result.returncode == 0, result.stderr
    return out, result


def test_training_lowers_the_loss_and_writes_a_checkpoint_matte_and_the_published_layout_load(
        whole_run, dataset, tmp_path, seed1_checkpoint):
    out, result = whole_run
    assert "wrote" in result.stdout and "epoch 3 of 3" in result.stdout
    history = record(out)["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3] and history[-1]["step"] == 6
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert set(history[-1]["validation"]) == {"sad", "mse", "grad", "conn"}
    assert result.stderr.count("validation on 3 image(s): SAD/1e3") == 3

    saved = torch.load(out, weights_only=True)["state_dict"]
    spec = json.loads((FIXTURES / "spec.json").read_text())
    assert [(key, list(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in saved.items()] == \
        [(key, shape, dtype) for key, shape, dtype in spec]
    base = torch.load(seed1_checkpoint, weights_only=True)
    assert all(torch.equal(saved[key], base[key]) for key in base if key.startswith("lpn."))  # the prior is frozen
    trained = [key for key in base if key.startswith("shm.") and key.endswith(".weight")]
    assert trained and all(not torch.equal(saved[key], base[key]) for key in trained)

    matted = run_cli("matte", dataset / "image" / "s1.png", tmp_path / "alpha.exr", "--checkpoint", out,
                     "--device", "cpu", "--quiet")
    assert matted.returncode == 0, matted.stderr
    assert read_alpha(str(tmp_path / "alpha.exr")).shape == (96, 128)


def test_a_resumed_run_continues_the_steps_and_the_schedule_and_ends_as_an_uninterrupted_one(
        whole_run, dataset, tmp_path, seed1_checkpoint):
    part = tmp_path / "part.pth"
    stopped = train(dataset, "--checkpoint", seed1_checkpoint, "--out", part, *SCHEDULE, "--validation", dataset,
                    "--max-steps", "3")
    assert stopped.returncode == 0, stopped.stderr
    assert "continue with --resume" in stopped.stdout
    state = record(part)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (3, 1, 1)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)

    code, stderr = in_process("train", dataset, "--checkpoint", seed1_checkpoint, "--out", part, *SCHEDULE, *SMALL)
    assert code == 2 and "give --resume" in stderr

    resumed = train(dataset, "--out", part, "--resume", "--validation", dataset)
    assert resumed.returncode == 0, resumed.stderr
    state = record(part)
    assert (state["step"], state["epoch"]) == (6, 3)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-4)
    assert state["history"] == record(whole_run[0])["history"]
    ours, theirs = read_published(str(part))[0], read_published(str(whole_run[0]))[0]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)

    code, stderr = in_process("train", dataset, "--out", part, "--resume", *SMALL)
    assert code == 0 and "finished its 3 epochs (6 steps): nothing to do" in stderr
    code, stderr = in_process("train", dataset, "--out", part, "--resume", "--seed", "5", *SMALL)
    assert code == 2 and "has seed 0, not 5" in stderr


@pytest.mark.parametrize("layout", ["file list with fg,bg", "folder of fg/ composited over bg/"])
def test_each_dataset_layout_trains(dataset, tmp_path, seed1_checkpoint, layout):
    if layout.startswith("file list"):
        data = tmp_path / "list.txt"
        data.write_text("# image,alpha,fg,bg\n" + "".join(
            f"{dataset}/image/s{i}.png,{dataset}/alpha/s{i}.png,{dataset}/fg/s{i}.png,{dataset}/bg/s{i}.png\n"
            for i in range(3)))
    else:
        data = tmp_path / "composites"
        for name in ("alpha", "fg", "bg"):
            (data / name).mkdir(parents=True)
            for i in range(3):
                (data / name / f"s{i}.png").symlink_to(dataset / name / f"s{i}.png")
    out = tmp_path / "run.pth"
    result = train(data, "--checkpoint", seed1_checkpoint, "--out", out, "--max-steps", "1")
    assert result.returncode == 0, result.stderr
    assert record(out)["step"] == 1


def test_a_config_file_gives_recipe_values_and_flags_win(dataset, tmp_path, seed1_checkpoint):
    config = tmp_path / "recipe.toml"
    config.write_text('epochs = 1\nlearning-rate = 5e-4\nbatch = 3\n')
    out = tmp_path / "run.pth"
    result = train(dataset, "--checkpoint", seed1_checkpoint, "--out", out, "--config", config)  # SMALL has --batch 2
    assert result.returncode == 0, result.stderr
    made = record(out)
    assert (made["recipe"]["epochs"], made["recipe"]["learning_rate"], made["recipe"]["batch"]) == (1, 5e-4, 2)
    assert made["step"] == 2
    config.write_text('epochs = 1\nlearning_rat = 5e-4\n')
    wrong = train(dataset, "--checkpoint", seed1_checkpoint, "--out", tmp_path / "other.pth", "--config", config)
    assert wrong.returncode == 2 and "unknown key 'learning_rat'" in wrong.stderr


@pytest.mark.parametrize("case, expected", [
    ("empty list", "has no samples"),
    ("a line of three names", "line 2: expected image,alpha or image,alpha,fg,bg"),
    ("a missing file", "file not found: "),
    ("an unreadable image", "sample 1 of .* cannot be read"),
    ("an alpha of another size", r"the alpha .* is 128x96, the image .* 64x48: they must be the same size"),
])
def test_a_dataset_that_cannot_train_says_why_in_one_line(dataset, tmp_path, seed1_checkpoint, case, expected):
    import re

    listing = tmp_path / "list.txt"
    lines = {"empty list": "# nothing yet\n",
             "a line of three names": f"{dataset}/image/s0.png,{dataset}/alpha/s0.png\na.png,b.png,c.png\n",
             "a missing file": f"{dataset}/image/s0.png,{tmp_path}/nowhere.png\n",
             "an unreadable image": f"{tmp_path}/text.png,{dataset}/alpha/s0.png\n",
             "an alpha of another size": f"{tmp_path}/small.png,{dataset}/alpha/s0.png\n"}
    (tmp_path / "text.png").write_text("not an image")
    write_rgb(tmp_path / "small.png", eight_bit(disc(0, 48, 64)[0]))
    listing.write_text(lines[case])
    code, stderr = in_process("train", listing, "--checkpoint", seed1_checkpoint, "--out", tmp_path / "run.pth", *SMALL)
    assert code == 2
    message = stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("sparsemat: error: "), stderr
    assert re.search(expected, message[0]), message[0]


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """The sample clip, small: 24 frames of 320 x 180 with their exact alphas and coarse priors."""
    folder = tmp_path_factory.mktemp("shot")
    subprocess.run([sys.executable, str(REPO / "examples" / "make_sample_clip.py"), str(folder), "--size", "320x180"],
                   check=True, capture_output=True)
    return folder


def test_finetuning_on_three_keyframes_lowers_the_held_out_error_and_matte_uses_the_result(
        shot, tmp_path, seed1_checkpoint):
    out = tmp_path / "shot.pth"
    result = run_cli("finetune", shot / "plate.####.png", "--prior", shot / "prior.####.exr",
                     *(option for frame in (1, 12, 24) for option in ("--keyframe", f"{frame}=" f"{shot}/alpha.{frame:04d}.exr")),
                     "--held-out", f"6={shot}/alpha.0006.exr", "--checkpoint", seed1_checkpoint, "--out", out,
                     "--steps", "12", "--crop", "128", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "held-out frame 6: before SAD/1e3" in result.stdout and "12 steps on 3 keyframe(s)" in result.stdout
    made = record(out)
    before, after = made["held_out_before"][6], made["held_out_after"][6]
    assert after["sad"] < 0.8 * before["sad"] and after["mse"] < before["mse"], (before, after)

    matted = run_cli("matte", shot / "plate.####.png", tmp_path / "a.####.exr", "--prior", shot / "prior.####.exr",
                     "--frames", "6", "--checkpoint", out, "--device", "cpu", "--quiet")
    assert matted.returncode == 0, matted.stderr
    scored = run_cli("eval", tmp_path / "a.0006.exr", shot / "alpha.0006.exr", "--json")
    assert json.loads(scored.stdout)["mean"]["sad"] == pytest.approx(after["sad"], rel=1e-6)


@pytest.mark.parametrize("case, expected", [
    ("a keyframe outside the shot", "keyframe 40 is outside the plate's frames"),
    ("a held-out keyframe trained on", "frame 12 is both a --keyframe and --held-out"),
    ("a matte of another size", r"keyframe 12: the matte .* is 64x48, the plate .* 320x180"),
    ("a held-out frame outside the shot", "held-out frame 30 is outside the plate's frames"),
    ("an --out that exists", r"--out .* exists: name a new file"),
    ("a colourspace that does not exist", "--input-colorspace: "),
])
def test_a_finetune_that_cannot_start_says_why_in_one_line(shot, tmp_path, seed1_checkpoint, case, expected):
    import re

    write_alpha(str(tmp_path / "small.exr"), np.zeros((48, 64), np.float32))
    keyframe = {"a keyframe outside the shot": f"40={shot}/alpha.0012.exr",
                "a matte of another size": f"12={tmp_path}/small.exr"}.get(case, f"12={shot}/alpha.0012.exr")
    extra = {"a held-out keyframe trained on": ["--held-out", f"12={shot}/alpha.0012.exr"],
             "a held-out frame outside the shot": ["--held-out", f"30={shot}/alpha.0012.exr"],
             "a colourspace that does not exist": ["--input-colorspace", "no such space"]}.get(case, [])
    out = tmp_path / "shot.pth"
    if case == "an --out that exists":
        out.write_bytes(b"an earlier fine-tune")
    code, stderr = in_process("finetune", shot / "plate.####.png", "--keyframe", keyframe, *extra, "--checkpoint",
                              seed1_checkpoint, "--out", out, "--steps", "1", "--device", "cpu", "--quiet")
    assert code == 2
    message = stderr.strip().splitlines()
    assert len(message) == 1 and re.search(expected, message[0]), stderr
