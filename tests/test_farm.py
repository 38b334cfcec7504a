"""The farm template (host_integrations/farm/sparsemat_matte.yaml) through the real `openjd run`.

A 7-frame clip is matted in chunks of 2 and of 5, each chunk a task sent through the
session's engine daemon, and both must give exactly the files of one in-process run of
the whole range with the same keyframe interval; no engine may outlive its session.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, write_rgb
from sparsemat.engine.imageio import read_alpha

TEMPLATE = REPO / "host_integrations" / "farm" / "sparsemat_matte.yaml"
FRAMES = range(1, 8)
KEYFRAMES = 3  # keyframes 3 and 6: chunks start on them (3-4), after them (5-6, 7-7, 5-7) and before (1-2, 1-4)
# Chunks that openjd forms from "1-7" (CONTIGUOUS, balanced), and the frames each re-mattes first.
CHUNKS = {2: {"1-2": 0, "3-4": 0, "5-6": 2, "7-7": 1}, 5: {"1-4": 0, "5-7": 2}}


def _env(runtime) -> dict:
    # The tasks call `sparsemat` and `bash` from PATH: make sure it is this interpreter's.
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _sparsemat(*args) -> list[str]:
    return [sys.executable, "-m", "sparsemat.engine.cli", *map(str, args)]


@pytest.fixture(scope="module")
def clip(reference, tmp_path_factory):
    """Frames 1-7: a 96 x 96 crop of the reference clip (its 3 frames in turn), 8-bit PNG.
    At this size the previous frame's state changes the alpha (at 48 x 64 it does not), so
    a chunk that started cold would show."""
    folder = tmp_path_factory.mktemp("plate")
    for frame in FRAMES:
        write_rgb(folder / f"p.{frame:04d}.png", np.ascontiguousarray(reference["frames"][(frame - 1) % 3, 80:176, 140:236]))
    return folder / "p.%04d.png"


@pytest.fixture()
def runtime(tmp_path):
    """A private XDG_RUNTIME_DIR. Should a run be cut short before its onExit, the engines it
    started (their pid files are here) are stopped afterwards, so a failure leaves nothing behind."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    yield folder
    for pid_file in (folder / "sparsemat").glob("*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        if pid and pid in engine_processes(""):
            os.kill(pid, signal.SIGTERM)


def engine_processes(needle: str) -> list[int]:
    """Live `sparsemat.engine.cli engine serve` processes whose command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "sparsemat.engine.cli engine serve" in command and needle in command:
            found.append(int(entry))
    return found


def test_template_passes_openjd_check():
    result = subprocess.run([sys.executable, "-m", "openjd", "check", str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passes validation checks" in result.stdout


def test_chunked_farm_runs_equal_one_whole_run(clip, seed1_checkpoint, runtime, tmp_path):
    env = _env(runtime)
    runs = {
        # The reference: the whole range in one process, no engine.
        "whole": _sparsemat("matte", clip, tmp_path / "whole" / "a.%04d.exr", "--checkpoint", seed1_checkpoint,
                            "--device", "cpu", "--keyframe-interval", KEYFRAMES, "--quiet"),
        # Frame 5 alone without keyframes: what a chunk starting at 5 would give without its pre-roll.
        "cold": _sparsemat("matte", clip, tmp_path / "cold" / "a.%04d.exr", "--checkpoint", seed1_checkpoint,
                           "--device", "cpu", "--frames", "5", "--quiet"),
    }
    for size in CHUNKS:
        runs[f"chunk{size}"] = [
            sys.executable, "-m", "openjd", "run", str(TEMPLATE), "--step", "Matte",
            "-p", f"InputPattern={clip}", "-p", f"OutputPattern={tmp_path / f'chunk{size}' / 'a.%04d.exr'}",
            "-p", f"Frames={FRAMES[0]}-{FRAMES[-1]}", "-p", f"ChunkSize={size}", "-p", f"KeyframeInterval={KEYFRAMES}",
            "-p", f"Checkpoint={seed1_checkpoint}", "-p", "Device=cpu"]
    # All four at once: they are independent, and the farm runs are mostly waiting on their engine.
    processes = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for name, command in runs.items()}
    logs = {}
    try:
        for name, process in processes.items():
            logs[name] = process.communicate(timeout=400)[0]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} failed:\n{logs[name][-4000:]}"

    whole = {frame: read_alpha(str(tmp_path / "whole" / f"a.{frame:04d}.exr")) for frame in FRAMES}
    for size, chunks in CHUNKS.items():
        log = logs[f"chunk{size}"]
        # One session: the environment (the engine) is entered and left once around all the chunks.
        assert "Session ended successfully" in log and f"Chunks run: {len(chunks)}" in log, log[-3000:]
        assert log.count("Entering Environment: SparseMatEngine") == 1 and log.count("engine started at ") == 1
        assert log.count("Exiting Environment: SparseMatEngine") == 1 and re.search(r"engine at \S+ stopped", log)
        assert re.findall(r"Frame\(CHUNK\[INT\]\) = (\S+)", log) == list(chunks), log[-3000:]
        for chunk, prerolled in chunks.items():
            first, last = map(int, chunk.split("-"))
            summary = f"{last - first + 1} frame(s) written, 0 skipped, 0 failed"
            assert (summary + (f", {prerolled} pre-rolled" if prerolled else " in ")) in log, (chunk, log[-3000:])

        out = tmp_path / f"chunk{size}"
        assert sorted(os.listdir(out)) == sorted(f"a.{frame:04d}.exr" for frame in FRAMES)
        for frame in FRAMES:
            alpha = read_alpha(str(out / f"a.{frame:04d}.exr"))
            assert alpha.shape == (96, 96) and np.array_equal(alpha, whole[frame]), f"chunk size {size}, frame {frame}"

        # The engine died with its session: no `engine serve` process on the session's socket, no pid file.
        # The default address is a socket in the session's working directory.
        address = re.search(r"openjd_env: SPARSEMAT_ENGINE_ADDRESS=(\S+)", log).group(1)
        assert re.fullmatch(r"ipc://.+/sparsemat-engine\.sock", address) and f"through the engine at {address}" in log
        assert engine_processes(address) == []
    # Nothing left in the runtime folder either: pid files go with the engine, the logs (shown in the
    # session log) with the session.
    assert list((runtime / "sparsemat").iterdir()) == []

    # Without the pre-roll, frame 5 would differ: the equality above is not a coincidence of the clip.
    assert not np.array_equal(read_alpha(str(tmp_path / "cold" / "a.0005.exr")), whole[5])
