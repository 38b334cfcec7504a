"""Shared fixtures: the published-format checkpoint generator and the reference clip."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SPARSEMAT_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


def make_checkpoint(seed: int, path: Path, module: bool = False) -> Path:
    """A seeded random checkpoint in the published format, written by the fixture's own script."""
    command = [sys.executable, str(FIXTURES / "make_ckpt.py"), str(seed), str(path)] + (["--module"] if module else [])
    subprocess.run(command, check=True)
    return path


@pytest.fixture(scope="session")
def reference():
    if not (FIXTURES / "seed1_256x384.npz").exists():
        pytest.fail(f"reference fixtures not found in {FIXTURES} (set SPARSEMAT_FIXTURES)")
    return dict(np.load(FIXTURES / "seed1_256x384.npz"))


@pytest.fixture(scope="session")
def seed1_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(1, tmp_path_factory.mktemp("ckpt") / "seed1.pth")


@pytest.fixture(scope="session")
def seed1_model(seed1_checkpoint):
    from sparsemat.engine.model import SparseMat

    return SparseMat.from_checkpoint(str(seed1_checkpoint))


def write_rgb(path, pixels: np.ndarray) -> None:
    """An RGB test image through OpenImageIO: uint8 pixels as 8-bit, float32 as float (EXR)."""
    import OpenImageIO as oiio

    kind = oiio.UINT8 if pixels.dtype == np.uint8 else oiio.FLOAT
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), oiio.ImageSpec(pixels.shape[1], pixels.shape[0], pixels.shape[2], kind)), out.geterror()
    assert out.write_image(np.ascontiguousarray(pixels)), out.geterror()
    out.close()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed ``sparsemat`` console command, as a user runs it."""
    return subprocess.run(["sparsemat", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def assert_faithful(alpha: np.ndarray, ref: np.ndarray, label: str = "") -> None:
    """The fixture README's tolerance: mean |diff| <= 1e-4 and >= 99.9% of pixels within 1e-3."""
    assert alpha.shape == ref.shape, f"{label}: shape {alpha.shape} != {ref.shape}"
    diff = np.abs(alpha.astype(np.float64) - ref)
    within = float((diff <= 1e-3).mean())
    assert diff.mean() <= 1e-4 and within >= 0.999, f"{label}: mean {diff.mean():.2e}, within 1e-3: {within:.4%}"


def scaled(seconds: float) -> float:
    """A time bound stretched by how busy this machine is now (1 + load per core, or the factor
    in $SPARSEMAT_TEST_TIME_SCALE): bounds stay meaningful on a quiet machine and hold on a
    loaded one, where everything, the engine's heartbeats included, runs slower."""
    factor = os.environ.get("SPARSEMAT_TEST_TIME_SCALE")
    if factor:
        return seconds * float(factor)
    return seconds * (1.0 + os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """Every shared-memory block the suite's clients created is removed at the end, even when a
    test failed before closing its own (a loaded run once left 41 MB behind). Only blocks whose
    client is gone or is this process: another test session's live blocks are not ours to take."""
    if not os.path.isdir("/dev/shm"):
        yield
        return
    before = set(os.listdir("/dev/shm"))
    yield
    for name in set(os.listdir("/dev/shm")) - before:
        match = re.fullmatch(r"sparsemat-(\d+)-[0-9a-f]+", name)
        if match and (int(match.group(1)) == os.getpid() or not os.path.exists(f"/proc/{match.group(1)}")):
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


# Test engines exit on their own once idle this long, so an interrupted run leaves no daemon behind.
TEST_ENGINE_IDLE_EXIT = ("--exit-when-idle", "300")


def start_engine(address: str, checkpoint, runtime, *options) -> int:
    """A real engine daemon through ``sparsemat engine start``; returns its pid. ``options`` may
    give another ``--exit-when-idle`` (the last one given counts)."""
    from sparsemat.plugin.client import EngineClient

    result = run_cli("engine", "start", "--address", address, "--checkpoint", checkpoint, "--device", "cpu",
                     *TEST_ENGINE_IDLE_EXIT, *options, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    return EngineClient(address).hello()["pid"]


def stop_engine(address: str, runtime) -> subprocess.CompletedProcess:
    return run_cli("engine", "stop", "--address", address, env={"XDG_RUNTIME_DIR": str(runtime)})


@pytest.fixture(scope="module")
def engine(runtime, seed1_checkpoint):
    """A real engine with the seeded checkpoint for a module's tests, on a socket in its runtime
    folder: its address."""
    address = f"ipc://{runtime}/engine.sock"
    start_engine(address, seed1_checkpoint, runtime)
    yield address
    stop_engine(address, runtime)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """A private runtime folder (socket, pid and log files) for a module's engines."""
    folder = tmp_path_factory.mktemp("run")
    folder.chmod(0o700)
    return folder
