"""Files identical to one uninterrupted in-process run, when the engine forgets a stream mid-job."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli, start_engine, stop_engine, write_rgb
from sparsemat.engine.imageio import read_alpha
from sparsemat.engine.job import MatteJob, run_job
from sparsemat.engine.remote import EngineMatter
from sparsemat.engine.sequence import parse_pattern
from sparsemat.plugin.client import EngineClient

FRAMES = range(8)
STATE_BYTES = 4 * 64 * 96 * 4  # one 64 x 96 stream: its normalized frame (3 planes) and its alpha


@pytest.fixture(scope="module")
def clip(reference, tmp_path_factory):
    """Eight 64 x 96 frames, a patch moving right over a still background, and a still prior per
    frame: the band stays, so most of it is reused from the previous frame, and a frame matted
    without its stream's state differs from one matted with it (by up to 0.8 here)."""
    from sparsemat.engine.imageio import write_alpha

    folder = tmp_path_factory.mktemp("moving")
    background = reference["frames"][0, 96:160, 100:196]
    y, x = np.mgrid[0:64, 0:96]
    prior = np.clip((20 - np.hypot(y - 32, x - 48)) / 6 + 0.5, 0, 1).astype(np.float32)
    for number in FRAMES:
        plate = background.copy()
        plate[24:40, 10 + 6 * number:26 + 6 * number] = (230, 50, 25)
        write_rgb(folder / f"f.{number:04d}.png", plate)
        write_alpha(str(folder / f"p.{number:04d}.exr"), prior)
    return folder / "f.%04d.png", folder / "p.%04d.exr"


@pytest.fixture(scope="module")
def in_process(clip, seed1_checkpoint, tmp_path_factory):
    """{keyframe interval: alphas} of one uninterrupted in-process run."""
    runs = {}
    for interval in (0, 4):
        out = tmp_path_factory.mktemp(f"in-process-{interval}")
        result = run_cli("matte", clip[0], out / "a.%04d.exr", "--prior", clip[1], "--checkpoint", seed1_checkpoint,
                         "--device", "cpu", "--quiet", "--keyframe-interval", interval)
        assert result.returncode == 0, result.stderr
        runs[interval] = [read_alpha(str(out / f"a.{n:04d}.exr")) for n in FRAMES]
    return runs


def job_of(clip, out, interval: int) -> MatteJob:
    return MatteJob(parse_pattern(str(clip[0])), parse_pattern(str(out / "a.%04d.exr")), list(FRAMES),
                    prior=parse_pattern(str(clip[1])), keyframe_interval=interval)


class Interrupted(EngineMatter):
    """The job's frames through the engine, with ``interrupt()`` run once before each frame of ``before``."""

    def __init__(self, client, before: set[int], interrupt, warn=lambda text: None):
        super().__init__(client, "job", warn=warn)
        self.before, self.interrupt = set(before), interrupt

    def __call__(self, frame_rgb, frame, new_stream, **guides):
        if frame in self.before:
            self.before.discard(frame)
            self.interrupt()
        return super().__call__(frame_rgb, frame, new_stream, **guides)


def assert_same_files(out, expected):
    for number, alpha in zip(FRAMES, expected):
        assert np.array_equal(read_alpha(str(out / f"a.{number:04d}.exr")), alpha), f"frame {number}"


@pytest.mark.parametrize("interval", [0, 4])
def test_a_stream_evicted_mid_job_is_resumed_and_the_files_are_unchanged(clip, in_process, seed1_checkpoint,
                                                                          runtime, tmp_path, interval):
    """A budget that holds one stream: another client's frame evicts the job's stream before frames 2
    and 6; each is matted again after its stream's earlier frames."""
    address = f"ipc://{tmp_path}/evicting.sock"
    start_engine(address, seed1_checkpoint, runtime, "--memory-budget", repr(1.5 * STATE_BYTES / 2**30))
    intruder_frame = np.zeros((64, 96, 3), np.float32)
    with EngineClient(address) as client, EngineClient(address) as intruder:
        try:
            lines, warnings = [], []
            matter = Interrupted(client, {2, 6}, lambda: intruder.matte("intruder", 0, intruder_frame), warnings.append)
            summary = run_job(job_of(clip, tmp_path, interval), matter, progress=False, log=lines.append)
        finally:
            stop_engine(address, runtime)
    assert summary.ok and summary.written == 8, summary.describe()
    assert sum("no longer held this stream's state" in line for line in lines) == 2, lines
    # The engine said why, as it happened: relayed with the reply of the frame it computed afresh.
    assert [w.split(":")[0] for w in warnings] == ["frame 2", "frame 6"], warnings
    assert all("the stream was evicted: the engine's memory budget of 147456 bytes was reached" in w for w in warnings)
    assert summary.prerolled == (2 + 6 if interval == 0 else 2 + 2)  # frames matted again first
    assert_same_files(tmp_path, in_process[interval])


def test_an_engine_restarted_mid_job_gives_the_same_files(clip, in_process, seed1_checkpoint, runtime, tmp_path):
    address = f"ipc://{tmp_path}/restarted.sock"
    start_engine(address, seed1_checkpoint, runtime)

    def restart():
        stop_engine(address, runtime)
        start_engine(address, seed1_checkpoint, runtime)

    with EngineClient(address) as client:
        try:
            summary = run_job(job_of(clip, tmp_path, 4), Interrupted(client, {5}, restart), progress=False,
                              log=lambda line: None)
        finally:
            stop_engine(address, runtime)
    assert summary.ok and summary.written == 8 and summary.prerolled == 1, summary.describe()
    assert_same_files(tmp_path, in_process[4])


def test_an_engine_that_can_keep_no_state_fails_the_frames_that_need_it_and_says_why(clip, seed1_checkpoint,
                                                                                   runtime, tmp_path):
    """Never a silently different matte: with a budget below one stream, a frame that should continue
    its stream fails with a message (exit 1); the frame after it starts a stream of its own."""
    address = f"ipc://{tmp_path}/tiny.sock"
    start_engine(address, seed1_checkpoint, runtime, "--memory-budget", "1e-9")
    try:
        result = run_cli("matte", clip[0], tmp_path / "out" / "a.%04d.exr", "--prior", clip[1], "--engine", address,
                         "--quiet", "--keyframe-interval", "4")
    finally:
        stop_engine(address, runtime)
    assert result.returncode == 1
    assert result.stderr.count("the engine lost this stream's temporal state again") == 4, result.stderr
    assert "4 frame(s) written" in result.stdout and "4 failed" in result.stdout
