"""A new user's first hour: one clear line at the moment a problem is knowable, with the exit code
of the README's table, and no waiting where nothing can be done."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import TEST_ENGINE_IDLE_EXIT, run_cli, scaled, stop_engine, write_rgb
from sparsemat.engine.imageio import write_alpha
from sparsemat.engine.validation import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE
from sparsemat.plugin.client import EngineClient, start_command


@pytest.fixture()
def clip(tmp_path, reference):
    """Frames 1-3 as 8-bit PNG with a prior each."""
    for frame in range(1, 4):
        write_rgb(tmp_path / f"p.{frame:04d}.png", np.ascontiguousarray(reference["frames"][frame - 1][:64, :96]))
        write_alpha(str(tmp_path / f"prior.{frame:04d}.exr"), np.full((8, 12), 0.5, np.float32))
    return tmp_path


def seconds(*args) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = run_cli(*args)
    return time.monotonic() - started, result


def test_a_prior_pattern_with_a_typo_is_one_line_up_front(clip):
    result = run_cli("matte", clip / "p.%04d.png", clip / "out" / "a.%04d.exr", "--prior", clip / "priro.%04d.exr")
    assert result.returncode == EXIT_USAGE and result.stderr.count("\n") == 1, result.stderr
    assert "no frames match --prior" in result.stderr and "priro.0001.exr" in result.stderr
    single = run_cli("matte", clip / "p.0001.png", clip / "a.exr", "--prior", clip / "missing.exr")
    assert single.returncode == EXIT_USAGE and "--prior file not found" in single.stderr


@pytest.mark.parametrize("arguments", [("--frames", "abc"), ("--keyframe-interval", "x"), ("--device", "gpu")])
def test_usage_errors_come_as_fast_as_help(clip, arguments):
    """Checked before torch (or the model) loads: within a few times --help's own start-up."""
    help_time = min(seconds("--help")[0] for _ in range(3))
    elapsed, result = min((seconds("matte", clip / "p.%04d.png", clip / "a.%04d.exr", "--prior",
                                   clip / "prior.%04d.exr", *arguments) for _ in range(3)), key=lambda r: r[0])
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert elapsed < 4 * help_time, f"{elapsed:.2f} s against --help's {help_time:.2f} s"


def test_autostart_starts_an_engine_at_once_not_after_a_timeout(tmp_path, monkeypatch):
    tmp_path.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    address = f"ipc://{tmp_path}/auto.sock"
    client = EngineClient(address, timeout=60.0, autostart=start_command(None, "cpu", exit_when_idle=30))
    started = time.monotonic()
    try:
        client.matte("auto", 1, np.full((16, 24, 3), 0.5, np.float32), prior=np.full((2, 3), 0.5, np.float32))
        elapsed = time.monotonic() - started
    finally:
        client.close()
        stop_engine(address, tmp_path)
    assert elapsed < scaled(30), f"{elapsed:.0f} s: it waited for a timeout first"


def test_an_engine_stopped_during_a_run_says_so_and_exits_3(clip, runtime, reference, tmp_path):
    for frame in range(4, 40):  # a longer clip at 256 x 384: a few seconds through the engine
        write_rgb(clip / f"p.{frame:04d}.png", reference["frames"][frame % 3])
        write_alpha(str(clip / f"prior.{frame:04d}.exr"), np.full((8, 12), 0.5, np.float32))
    address = f"ipc://{tmp_path}/stopped.sock"
    assert run_cli("engine", "start", "--address", address, "--device", "cpu", *TEST_ENGINE_IDLE_EXIT,
                   env={"XDG_RUNTIME_DIR": str(runtime)}).returncode == 0
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(result=run_cli(
        "matte", clip / "p.%04d.png", tmp_path / "out" / "a.%04d.exr", "--prior", clip / "prior.%04d.exr",
        "--engine", address, "--quiet", env={"XDG_RUNTIME_DIR": str(runtime)})))
    job.start()
    while not (tmp_path / "out").exists():
        time.sleep(0.1)
    started = time.monotonic()
    stop_engine(address, runtime)
    job.join(timeout=120)
    result = outcome["result"]
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "was stopped" in result.stderr or "stopped while it had the request" in result.stderr, result.stderr
    assert time.monotonic() - started < scaled(20)


def test_a_failed_start_shows_its_own_log_lines_only(tmp_path, runtime):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    address = f"ipc://{tmp_path}/failing.sock"
    for attempt in range(2):
        result = run_cli("engine", "start", "--address", address, "--checkpoint", bad, "--device", "cpu",
                         env={"XDG_RUNTIME_DIR": str(runtime)})
        assert result.returncode == EXIT_FAILED
        assert result.stderr.count("cannot be read") == 1, result.stderr  # not the first attempt's lines too
        assert "weights_only" not in result.stderr  # torch's advice to run the file's code is never passed on


def test_eval_into_a_closed_pipe_ends_quietly(clip):
    result = subprocess.run(f"sparsemat eval {clip}/prior.%04d.exr {clip}/prior.%04d.exr | head -1", shell=True,
                            capture_output=True, text=True)
    assert result.stdout.startswith("#") and "Traceback" not in result.stderr, result.stderr


def test_the_messages_new_users_met(clip, tmp_path):
    truncated = clip / "p.0002.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    result = run_cli("matte", clip / "p.%04d.png", tmp_path / "out" / "a.%04d.exr", "--prior", clip / "prior.%04d.exr",
                     "--quiet")
    failed = [line for line in result.stdout.splitlines() if "failed:" in line]
    assert result.returncode == EXIT_FAILED and len(failed) == 1 and "p.0002.png" in failed[0]
    assert "PNG library error" not in result.stdout + result.stderr  # one line, not the same error thrice

    folder = tmp_path / "a_folder.pth"
    folder.mkdir()
    result = run_cli("matte", clip / "p.0001.png", tmp_path / "a.exr", "--checkpoint", folder)
    assert result.returncode == EXIT_USAGE and "is a folder, not a checkpoint file" in result.stderr

    (tmp_path / "plain").write_text("")
    result = run_cli("matte", clip / "p.0001.png", tmp_path / "plain" / "a.exr", "--prior", clip / "prior.0001.exr")
    assert result.returncode == EXIT_FAILED and f"{tmp_path / 'plain'} is a file, not a folder" in result.stderr

    nothing = run_cli("matte", truncated, tmp_path / "none.exr", "--prior", clip / "prior.0002.exr", "--quiet")
    assert nothing.returncode == EXIT_FAILED and "0 frame(s) written" in nothing.stdout
    assert "per written frame" not in nothing.stdout  # not "0.00 s per written frame"


def test_a_guided_engine_without_a_prior_is_a_usage_error(clip, runtime, tmp_path):
    address = f"ipc://{tmp_path}/guided.sock"
    assert run_cli("engine", "start", "--address", address, "--device", "cpu", *TEST_ENGINE_IDLE_EXIT,
                   env={"XDG_RUNTIME_DIR": str(runtime)}).returncode == 0
    try:
        result = run_cli("matte", clip / "p.%04d.png", tmp_path / "out" / "a.%04d.exr", "--engine", address)
    finally:
        stop_engine(address, runtime)
    assert result.returncode == EXIT_USAGE and "give --prior PATTERN" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_the_progress_bar_shows_one_rate(clip, tmp_path):
    code = ("import sys; sys.stderr.isatty = lambda: True\n"
            "from sparsemat.engine.cli import main\n"
            f"sys.exit(main(['matte', {str(clip / 'p.%04d.png')!r}, {str(tmp_path / 'a.%04d.exr')!r}, '--prior', "
            f"{str(clip / 'prior.%04d.exr')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    final = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert "written frames/s" in final and "s/frame" not in final and "frame/s," not in final, final


def test_help_says_what_the_options_do():
    help_text = run_cli("matte", "--help").stdout
    assert "without --checkpoint, the weight-free guided refiner refines it" in " ".join(help_text.split())
    for option in ("--device DEVICE", "--float16-network", "--half-float-output", "--openjd-progress"):
        assert option in help_text, option
    assert "run the network in float16" in help_text and "write EXR mattes as half floats" in help_text
