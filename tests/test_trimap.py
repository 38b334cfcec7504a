"""Trimaps as guidance: known pixels fixed exactly, the band bounded by the unknown region."""
from __future__ import annotations

import re
import threading

import msgpack
import numpy as np
import pytest
import torch
import zmq

from conftest import run_cli, start_engine, stop_engine, write_rgb
from sparsemat.engine.imageio import read_alpha
from sparsemat.engine.matting import Matter
from sparsemat.engine.validation import FrameError
from sparsemat.plugin.client import EngineClient, EngineError

SCALE = 4  # the trimaps here are a quarter of the frame's size: nearest resizing repeats each pixel 4 x 4


@pytest.fixture(scope="module")
def frames(reference):
    return [torch.from_numpy(frame).float() / 255 for frame in reference["frames"]]


def disc_trimap(height: int, width: int, radius: float, ring: float) -> np.ndarray:
    """0 outside, 1 inside a disc, 0.5 within ``ring`` of its edge."""
    y, x = np.mgrid[:height, :width]
    distance = np.hypot(y - height / 2, x - width / 2) - radius
    return np.where(distance < -ring, 1.0, np.where(distance > ring, 0.0, 0.5)).astype(np.float32)


def full_size(trimap: np.ndarray) -> np.ndarray:
    return np.kron(trimap, np.ones((SCALE, SCALE), dtype=trimap.dtype))


@pytest.fixture(scope="module")
def trimap(frames):
    height, width = frames[0].shape[:2]
    return disc_trimap(height // SCALE, width // SCALE, radius=20, ring=3)


def test_known_pixels_are_exact_and_the_band_is_the_unknown_region(seed1_model, frames, trimap):
    alpha, _, stats = Matter(seed1_model).matte(frames[0], trimap=torch.from_numpy(trimap))
    alpha, known = alpha.numpy(), full_size(trimap)
    assert np.all(alpha[known == 1] == 1.0) and np.all(alpha[known == 0] == 0.0)
    unknown = (known == 0.5)
    refined = stats.masks.refine[0, 0].numpy() > 0
    assert np.array_equal(refined, unknown) and stats.active_pixels == unknown.sum()
    inside = alpha[unknown]
    assert len(np.unique(inside)) > 100  # the network's values, not the trimap's 0.5


def test_a_dilated_trimap_widens_the_band_into_the_known_regions(seed1_model, frames, trimap):
    dilation = 5
    alpha, _, stats = Matter(seed1_model).matte(frames[0], trimap=torch.from_numpy(trimap), trimap_dilation=dilation)
    known = full_size(trimap)
    padded = np.pad(known == 0.5, dilation)
    widened = np.lib.stride_tricks.sliding_window_view(padded, (2 * dilation + 1,) * 2).any(axis=(2, 3))
    assert np.array_equal(stats.masks.refine[0, 0].numpy() > 0, widened)
    alpha = alpha.numpy()
    assert np.all(alpha[(known == 1) & ~widened] == 1.0) and np.all(alpha[(known == 0) & ~widened] == 0.0)


def test_the_next_frame_refines_only_inside_the_unknown_region(seed1_model, frames, trimap):
    matter, given = Matter(seed1_model), torch.from_numpy(trimap)
    _, state, _ = matter.matte(frames[0], trimap=given)
    alpha, _, stats = matter.matte(frames[1], state, trimap=given)
    known = full_size(trimap)
    refined = stats.masks.refine[0, 0].numpy() > 0
    assert stats.reused and 0 < refined.sum() and not refined[known != 0.5].any()
    assert np.all(alpha.numpy()[known == 1] == 1.0) and np.all(alpha.numpy()[known == 0] == 0.0)


def test_a_prior_feeds_the_refiner_and_the_trimap_bounds_it(seed1_model, frames, trimap):
    height, width = frames[0].shape[:2]
    prior = torch.from_numpy(disc_trimap(height, width, radius=40, ring=20))  # a band elsewhere, and wider
    matter = Matter(seed1_model)
    with_prior, _, stats = matter.matte(frames[0], prior=prior, trimap=torch.from_numpy(trimap))
    without, _, _ = matter.matte(frames[0], trimap=torch.from_numpy(trimap))
    unknown = full_size(trimap) == 0.5
    assert np.array_equal(stats.masks.refine[0, 0].numpy() > 0, unknown)
    assert not torch.equal(with_prior, without)


def test_over_budget_the_cascade_keeps_the_known_pixels(seed1_model, frames, trimap):
    alpha, _, stats = Matter(seed1_model).matte(frames[0], trimap=torch.from_numpy(trimap), max_pixels=1000)
    known = full_size(trimap)
    assert stats.mode in ("cascade", "rescale") and stats.active_pixels <= 1000
    assert np.all(alpha.numpy()[known == 1] == 1.0) and np.all(alpha.numpy()[known == 0] == 0.0)


def test_the_guided_refiner_mattes_from_a_trimap_alone():
    """A soft-edged red disc on blue: from a trimap with a 6 px unknown ring, the weight-free
    refiner recovers the edge far better than the trimap's own grey ring does."""
    height, width = 192, 256
    y, x = np.mgrid[:height, :width]
    truth = np.clip(40.5 - np.hypot(y - height / 2, x - width / 2), 0, 1).astype(np.float32)
    frame = np.stack([0.1 + 0.8 * truth, 0.2 + 0 * truth, 0.9 - 0.8 * truth], axis=-1).astype(np.float32)
    trimap = disc_trimap(height // SCALE, width // SCALE, radius=10, ring=1.5)
    alpha, _, stats = Matter(None).matte(torch.from_numpy(frame), trimap=torch.from_numpy(trimap))
    alpha, known = alpha.numpy(), full_size(trimap)
    assert stats.mode == "guided"
    assert np.all(alpha[known == 1] == 1.0) and np.all(alpha[known == 0] == 0.0)
    unknown = known == 0.5
    assert np.abs(alpha - truth)[unknown].sum() < 0.25 * np.abs(known - truth)[unknown].sum()


def test_bad_trimaps_are_refused_with_the_reason(seed1_model, frames):
    matter = Matter(seed1_model)
    with pytest.raises(FrameError, match=r"the trimap is 96x96 \(aspect 1.000\), the frame 384x256 \(aspect 1.500\)"):
        matter.matte(frames[0], trimap=torch.full((96, 96), 0.5))
    holed = torch.full((64, 96), 0.5)
    holed[3, 7] = float("nan")
    with pytest.raises(FrameError, match="the trimap has"):
        matter.matte(frames[0], trimap=holed)
    with pytest.raises(ValueError, match="trimap_dilation must be 0 to 256 pixels, got 300"):
        matter.matte(frames[0], trimap=torch.full((64, 96), 0.5), trimap_dilation=300)
    alpha, _, _ = matter.matte(frames[0], trimap=torch.full((65, 96), 0.5))  # one pixel off: rounding, accepted
    assert alpha.shape == (256, 384)


# ---- through the engine, the command line and an older engine --------------------------------------

@pytest.fixture(scope="module")
def engines(runtime, seed1_checkpoint):
    """A real engine with the seeded checkpoint and one without (the guided refiner)."""
    addresses = {"model": f"ipc://{runtime}/model.sock", "guided": f"ipc://{runtime}/guided.sock"}
    start_engine(addresses["model"], seed1_checkpoint, runtime)
    start_engine(addresses["guided"], "", runtime)
    yield addresses
    for address in addresses.values():
        stop_engine(address, runtime)


def test_a_trimap_travels_as_a_prior_does_and_mattes_as_in_process(engines, seed1_model, frames, trimap, tmp_path):
    frame = frames[0].numpy()
    known = np.round(trimap * 255).astype(np.uint8)  # 0, 128, 255: an 8-bit trimap
    write_rgb(tmp_path / "t.png", known[..., None])
    expected, _, _ = Matter(seed1_model).matte(frames[0], trimap=torch.from_numpy(known / np.float32(255)),
                                               trimap_dilation=2)
    with EngineClient(engines["model"]) as client:
        results = [client.matte(f"trimap-{transport}", 1, frame, transport=transport, trimap=known,
                                trimap_dilation=2) for transport in ("inline", "shm")]
        results.append(client.matte("trimap-file", 1, frame, trimap_path=str(tmp_path / "t.png"), trimap_dilation=2))
    for alpha, stats in results:
        assert np.array_equal(alpha, expected.numpy()) and stats["mode"] == "full"
    with EngineClient(engines["guided"]) as client:
        alpha, stats = client.matte("guided-trimap", 1, frame, trimap=known)  # no prior needed
    assert stats["mode"] == "guided"
    assert np.all(alpha[full_size(trimap) == 1] == 1) and np.all(alpha[full_size(trimap) == 0] == 0)


def test_the_engine_refuses_bad_trimaps_with_the_reason(engines, frames):
    frame = frames[0].numpy()
    with EngineClient(engines["model"]) as client:
        with pytest.raises(EngineError, match=r"the trimap is 50x50 .* must have the frame's aspect ratio \[bad_pixels\]"):
            client.matte("bad-trimap", 1, frame, trimap=np.full((50, 50), 0.5, np.float32))
        with pytest.raises(EngineError, match=r"'trimap_dilation' must be 0 to 256 \[bad_request\]"):
            client.matte("bad-trimap", 1, frame, trimap=np.full((64, 96), 0.5, np.float32), trimap_dilation=257)
    with EngineClient(engines["guided"]) as client:
        with pytest.raises(EngineError, match=r"send a 'prior', a 'trimap' or a 'clean_plate' \[bad_request\]"):
            client.matte("no-guide", 1, frame)


def test_a_client_never_sends_a_trimap_to_an_engine_that_would_ignore_it(runtime):
    """An engine of protocol 1.1 ignores fields it does not know: its matte would silently leave the
    trimap out. This stand-in answers hello as such an engine does (docs/PROTOCOL.md, "Versions")
    and counts the matte requests that reach it."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    address = f"ipc://{runtime}/old.sock"
    socket.bind(address)
    mattes = []

    def serve():
        while socket.poll(5000):
            identity, *frames = socket.recv_multipart()
            header = msgpack.unpackb(frames[0])
            if header["op"] == "matte":
                mattes.append(header)
            reply = {"v": 1, "id": header["id"], "ok": True, "protocol": 1, "protocol_minor": 1}
            socket.send_multipart([identity, msgpack.packb(reply)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with EngineClient(address, timeout=5) as client:
            with pytest.raises(EngineError, match=r"speaks protocol 1.1; a trimap needs 1.2 or later.*\[old_engine\]"):
                client.matte("s", 1, np.zeros((8, 8, 3), np.float32), trimap=np.full((8, 8), 0.5, np.float32))
    finally:
        thread.join()
        socket.close()
    assert mattes == []


def test_matte_with_a_trimap_sequence_from_the_command_line(frames, trimap, tmp_path):
    """The guided refiner from trimaps alone; a trimap of another aspect fails its frame, naming it."""
    for index, frame in enumerate(frames):
        write_rgb(tmp_path / f"p.{index:04d}.png", np.round(frame.numpy() * 255).astype(np.uint8))
        shape = trimap if index != 1 else trimap[:, :48]
        write_rgb(tmp_path / f"t.{index:04d}.png", np.round(shape * 255).astype(np.uint8)[..., None])
    result = run_cli("matte", tmp_path / "p.%04d.png", tmp_path / "a.%04d.exr", "--trimap", tmp_path / "t.%04d.png",
                     "--quiet", env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("error:") == 1 and re.search(
        r"error: cannot matte '.*p\.0001\.png': the trimap is 48x64 \(aspect 0\.750\), the frame 384x256", result.stderr)
    assert "2 frame(s) written, 0 skipped, 1 failed" in result.stdout
    known = full_size(trimap)
    for index in (0, 2):
        alpha = read_alpha(str(tmp_path / f"a.{index:04d}.exr"))
        assert np.all(alpha[known == 1] == 1) and np.all(alpha[known == 0] == 0)


@pytest.mark.parametrize("options, message", [
    (("--trimap", "{tmp}/missing.%04d.png"), "no frames match --trimap '.*missing.%04d.png'"),
    (("--trimap", "{tmp}/t.png"), "INPUT and --trimap must both be sequence patterns"),
    (("--trimap", "{tmp}/t.%04d.png", "--trimap-dilation", "257"), "--trimap-dilation: expected 0 to 256 pixels"),
])
def test_the_command_line_refuses_trimaps_it_cannot_use(frames, tmp_path, options, message):
    write_rgb(tmp_path / "p.0000.png", np.round(frames[0].numpy() * 255).astype(np.uint8))
    write_rgb(tmp_path / "t.0000.png", np.full((64, 96, 1), 128, np.uint8))
    write_rgb(tmp_path / "t.png", np.full((64, 96, 1), 128, np.uint8))
    result = run_cli("matte", tmp_path / "p.%04d.png", tmp_path / "a.%04d.exr",
                     *(option.format(tmp=tmp_path) for option in options), env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "a.0000.exr").exists()
