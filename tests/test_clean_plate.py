"""Clean plates as guidance: the prior from the frame's colour distance to the shot without its subject."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import run_cli, write_rgb
from sparsemat.engine.imageio import read_alpha
from sparsemat.engine.matting import Matter
from sparsemat.engine.validation import FrameError
from sparsemat.plugin.client import EngineClient, EngineError

HEIGHT, WIDTH = 540, 960


def encode(linear: np.ndarray) -> np.ndarray:
    """Linear light to sRGB, as a camera file's pixels are stored."""
    linear = np.clip(linear, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


def shot(shift: float = 0.0, exposure: float = 0.9, seed: int = 0):
    """(frame, clean plate, true alpha): a soft-edged orange disc over a textured background, with
    sensor noise in both pictures and the plate shot 10% darker (exposure drift)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:HEIGHT, :WIDTH].astype(np.float64)
    background = np.stack([0.2 + 0.15 * np.sin(x / 19.0), 0.25 + 0.1 * np.cos(y / 13.0),
                           0.3 + 0.1 * np.sin((x + y) / 29.0)], axis=-1)
    truth = np.clip(60.5 - np.hypot(y - HEIGHT / 2, x - WIDTH / 2 - shift), 0, 1)
    subject = np.array([0.6, 0.35, 0.2])
    frame = truth[..., None] * subject + (1 - truth[..., None]) * background
    frame, plate = (encode(picture + rng.normal(0, 0.01, picture.shape))
                    for picture in (frame, background * exposure))
    return frame, plate, truth.astype(np.float32)


def iou(alpha: np.ndarray, truth: np.ndarray) -> float:
    a, t = alpha > 0.5, truth > 0.5
    return float((a & t).sum() / (a | t).sum())


def test_the_guided_refiner_recovers_the_subject_from_a_clean_plate():
    frame, plate, truth = shot()
    alpha, _, stats = Matter(None).matte(torch.from_numpy(frame), clean_plate=torch.from_numpy(plate))
    assert stats.mode == "guided" and stats.note == ""
    assert iou(alpha.numpy(), truth) > 0.9
    # the band is the subject's edge, not the frame: the noise and the drift stay background
    assert 0 < stats.spatial_pixels < 0.1 * HEIGHT * WIDTH


def test_with_the_network_the_clean_plate_replaces_its_prior(seed1_model):
    frame, plate, truth = shot()
    alpha, _, stats = Matter(seed1_model).matte(torch.from_numpy(frame), clean_plate=torch.from_numpy(plate))
    assert stats.mode == "full" and 0 < stats.active_pixels < 0.1 * HEIGHT * WIDTH
    outside = stats.masks.refine[0, 0].numpy() == 0  # outside the band the clean plate's prior is the answer
    assert iou(alpha.numpy()[outside], truth[outside]) > 0.9 and (truth[outside] == 1).sum() > 5000


def test_a_plate_of_another_shot_is_said_in_the_note():
    frame, _, _ = shot()
    other = np.random.default_rng(1).random((HEIGHT, WIDTH, 3), dtype=np.float32)
    _, _, stats = Matter(None).matte(torch.from_numpy(frame), clean_plate=torch.from_numpy(other))
    assert re.fullmatch(r"the clean plate differs from \d+% of the frame: it may not be this shot's", stats.note)
    _, dark, _ = shot(exposure=0.05)  # over four stops under: not a drift
    _, _, stats = Matter(None).matte(torch.from_numpy(frame), clean_plate=torch.from_numpy(dark))
    assert re.fullmatch(r"the frame is 2\d\.\d\dx as bright as the clean plate: it may not be this shot's "
                        r"\(exposure is matched from 0.25x to 4x only\)", stats.note), stats.note


def test_bad_clean_plates_are_refused_with_the_reason(seed1_model):
    frame, plate, _ = shot()
    matter = Matter(seed1_model)
    with pytest.raises(FrameError, match=r"the clean plate is 240x540, the frame 960x540: a clean plate must be"):
        matter.matte(torch.from_numpy(frame), clean_plate=torch.from_numpy(plate[:, :240]))
    holed = plate.copy()
    holed[5, 6, 1] = np.inf
    with pytest.raises(FrameError, match="the clean plate has"):
        matter.matte(torch.from_numpy(frame), clean_plate=torch.from_numpy(holed))
    with pytest.raises(ValueError, match="a prior and a clean plate both replace the network's prior"):
        matter.matte(torch.from_numpy(frame), prior=torch.zeros(8, 8), clean_plate=torch.from_numpy(plate))


def test_one_clean_plate_for_a_locked_off_sequence_through_the_engine(engine, seed1_checkpoint, tmp_path):
    """The command line through a real engine: one plate file for every frame; the files equal an
    in-process run's with the same checkpoint, and the subject's core and the far background are
    the plate's prior."""
    truths = []
    for frame in range(3):
        picture, plate, truth = shot(shift=4.0 * frame, seed=frame)
        write_rgb(tmp_path / f"p.{frame:04d}.png", np.round(picture * 255).astype(np.uint8))
        truths.append(truth)
    write_rgb(tmp_path / "clean.png", np.round(plate * 255).astype(np.uint8))
    for name, options in (("local", ("--checkpoint", seed1_checkpoint)), ("engine", ("--engine", engine))):
        result = run_cli("matte", tmp_path / "p.%04d.png", tmp_path / name / "a.%04d.exr", "--clean-plate",
                         tmp_path / "clean.png", "--quiet", *options)
        assert result.returncode == 0, result.stderr
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    for frame, truth in enumerate(truths):
        local, remote = (read_alpha(str(tmp_path / name / f"a.{frame:04d}.exr")) for name in ("local", "engine"))
        distance = np.hypot(y - HEIGHT / 2, x - WIDTH / 2 - 4.0 * frame)
        assert np.array_equal(local, remote)
        assert np.all(local[distance < 35] == 1) and np.all(local[distance > 90] == 0)
    with EngineClient(engine) as client:
        with pytest.raises(EngineError, match=r"'prior' and 'clean_plate' both replace .* \[bad_request\]"):
            client.matte("both", 1, plate, prior=np.zeros((8, 8), np.float32), clean_plate=plate)


@pytest.mark.parametrize("options, message", [
    (("--clean-plate", "{tmp}/small.png"), r"--clean-plate is 240x540, the plates 960x540 \(.*p\.0000\.png\): a clean plate"),
    (("--clean-plate", "{tmp}/clean.png", "--prior", "{tmp}/p.%04d.png"), "--prior and --clean-plate both replace"),
    (("--clean-plate", "{tmp}/missing.png"), "--clean-plate file not found: .*missing.png"),
    (("--clean-plate", "{tmp}/c.%04d.png"), "no frames match --clean-plate '.*c.%04d.png': .* has its clean plate"),
])
def test_the_command_line_refuses_clean_plates_it_cannot_use(tmp_path, options, message):
    frame, plate, _ = shot()
    write_rgb(tmp_path / "p.0000.png", np.round(frame * 255).astype(np.uint8))
    write_rgb(tmp_path / "clean.png", np.round(plate * 255).astype(np.uint8))
    write_rgb(tmp_path / "small.png", np.round(plate[:, :240] * 255).astype(np.uint8))
    result = run_cli("matte", tmp_path / "p.%04d.png", tmp_path / "a.%04d.exr",
                     *(option.format(tmp=tmp_path) for option in options), env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and re.search(message, result.stderr), result.stderr
