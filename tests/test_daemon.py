"""The engine's life on a shared machine, against real engine processes: one engine per address,
a runtime folder no one else controls, no orphans, device names, exit codes."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import TEST_ENGINE_IDLE_EXIT, run_cli, scaled, stop_engine, write_rgb
from sparsemat.engine.validation import EXIT_FAILED, EXIT_IN_USE, EXIT_UNAVAILABLE, EXIT_USAGE
from sparsemat.plugin.client import EngineClient, start_command
from sparsemat.plugin.runtime import RuntimeFolderError, default_address, private_folder


def engines_serving(address: str) -> list[int]:
    """Pids of the live `engine serve` processes for ``address`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    arguments = handle.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "serve" in arguments and address in arguments:
                pids.append(int(entry))
    return pids


def wait_until(condition, limit_s: float) -> float:
    """Seconds until ``condition()`` held; fails the test after ``limit_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit_s:
            pytest.fail(f"not within {limit_s} s")
        time.sleep(0.2)
    return time.monotonic() - started


def guided_start(address: str, runtime, *options) -> subprocess.CompletedProcess:
    """``engine start`` of a weight-free engine (quick to load) on ``address``."""
    return run_cli("engine", "start", "--address", address, "--device", "cpu", *TEST_ENGINE_IDLE_EXIT, *options,
                   env={"XDG_RUNTIME_DIR": str(runtime)})


def test_a_second_engine_on_an_ipc_address_is_refused_and_the_first_keeps_it(runtime, tmp_path):
    address = f"ipc://{tmp_path}/e.sock"
    assert guided_start(address, runtime).returncode == 0
    try:
        first = EngineClient(address).hello()["pid"]
        result = run_cli("engine", "serve", "--address", address, "--device", "cpu",
                         env={"XDG_RUNTIME_DIR": str(runtime)})
        assert result.returncode == EXIT_IN_USE
        assert result.stderr.strip() == f"sparsemat: error: an engine already serves {address} (pid {first})"
        assert EngineClient(address).hello()["pid"] == first and engines_serving(address) == [first]
    finally:
        stop_engine(address, runtime)
    assert engines_serving(address) == [] and not os.path.exists(f"{tmp_path}/e.sock")


def test_two_starts_at_once_leave_one_engine_which_both_report(runtime, tmp_path):
    address = f"ipc://{tmp_path}/race.sock"
    results = []
    threads = [threading.Thread(target=lambda: results.append(guided_start(address, runtime))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert [result.returncode for result in results] == [0, 0], [result.stderr for result in results]
        pid = EngineClient(address).hello()["pid"]
        assert all(f"(pid {pid}" in result.stdout for result in results), [r.stdout for r in results]
        assert engines_serving(address) == [pid]
    finally:
        stop_engine(address, runtime)


def test_stop_and_status_find_an_engine_through_its_lock_when_it_does_not_answer(runtime, tmp_path):
    address = f"ipc://{tmp_path}/stopped.sock"
    assert guided_start(address, runtime).returncode == 0
    pid = EngineClient(address).hello()["pid"]
    os.kill(pid, 19)  # SIGSTOP: alive, holding its lock, answering nothing
    try:
        status = run_cli("engine", "status", "--address", address, env={"XDG_RUNTIME_DIR": str(runtime)})
        assert status.returncode == EXIT_UNAVAILABLE and f"pid {pid} holds its lock" in status.stdout
    finally:
        os.kill(pid, 18)  # SIGCONT: SIGTERM is delivered to a stopped process only once it runs
    result = run_cli("engine", "stop", "--address", address, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0 and engines_serving(address) == []


def test_an_engine_whose_runtime_folder_is_deleted_exits_by_itself(tmp_path):
    """logind removes $XDG_RUNTIME_DIR at logout: no client could find the engine any more."""
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    assert run_cli("engine", "start", "--device", "cpu", *TEST_ENGINE_IDLE_EXIT, env=env).returncode == 0
    address = f"ipc://{runtime}/sparsemat/engine.sock"
    pid = EngineClient(address).hello()["pid"]
    shutil.rmtree(runtime / "sparsemat")
    gone_after = wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), limit_s=scaled(30))
    assert gone_after < scaled(15), f"the orphan lived {gone_after:.0f} s"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("problem", ["mode 0777", "another user's"])
def test_a_runtime_folder_others_control_is_refused(tmp_path, problem):
    runtime = tmp_path / "xdg"
    folder = runtime / "sparsemat"
    folder.mkdir(parents=True)
    if problem == "mode 0777":
        folder.chmod(0o777)
        expected = f"is mode 0777: others could replace the engine's socket; run chmod 700 {folder}"
    else:
        folder.chmod(0o700)
        if os.getuid() != 0:
            pytest.skip("needs root to give the folder to another user")
        os.chown(folder, 65534, 65534)
        expected = f"belongs to uid 65534, not to you (uid {os.getuid()})"
    for command in (("engine", "status"), ("engine", "start", "--device", "cpu")):
        result = run_cli(*command, env={"XDG_RUNTIME_DIR": str(runtime)})
        assert result.returncode == EXIT_USAGE and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    with pytest.raises(RuntimeFolderError, match="another user could|others could"):
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            EngineClient()
        finally:
            del os.environ["XDG_RUNTIME_DIR"]
    assert not (folder / "engine.sock").exists()


def test_the_platforms_default_addresses(tmp_path, monkeypatch):
    """Linux and macOS: a socket in the private runtime folder; Windows (no ipc in ZeroMQ there, no
    uid): a loopback port of the user's own, the folder named after the user."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_address(windows=False) == f"ipc://{tmp_path}/sparsemat/engine.sock"
    windows = default_address(windows=True)
    assert windows.startswith("tcp://127.0.0.1:") and 47200 <= int(windows.rsplit(":", 1)[1]) < 47900
    assert windows == default_address(windows=True)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(RuntimeFolderError, match="not a folder"):
        private_folder(str(link))
    assert private_folder(str(link), windows=True) == str(link)


def test_an_auto_started_engine_exits_when_idle(tmp_path, monkeypatch):
    """What a `nuke -x` render that auto-started an engine leaves behind goes by itself."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    tmp_path.chmod(0o700)
    address = f"ipc://{tmp_path}/auto.sock"
    client = EngineClient(address, timeout=5.0, retries=1, autostart=start_command(None, "cpu", exit_when_idle=2))
    frame = np.full((32, 48, 3), 0.5, np.float32)
    alpha, stats = client.matte("auto", 1, frame, prior=np.full((4, 6), 0.5, np.float32))
    assert alpha.shape == (32, 48) and stats["mode"] == "guided"
    pid = client.hello()["pid"]
    client.close()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), limit_s=scaled(30))


def test_talking_to_no_engine_fails_in_about_a_second_with_the_address(tmp_path, reference):
    write_rgb(tmp_path / "f.0001.png", reference["frames"][0])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: connections are refused
    for address, why in ((f"ipc://{tmp_path}/nothing.sock", f"its socket file {tmp_path}/nothing.sock does not exist"),
                         (f"tcp://127.0.0.1:{port}", "the connection is refused")):
        started = time.monotonic()
        result = run_cli("matte", tmp_path / "f.%04d.png", tmp_path / "a.%04d.exr", "--engine", address)
        elapsed = time.monotonic() - started
        assert result.returncode == EXIT_UNAVAILABLE and why in result.stderr, result.stderr
        assert f"sparsemat engine start --address {address}" in result.stderr
        assert elapsed < scaled(15), f"{elapsed:.1f} s"
    status = run_cli("engine", "status", "--address", f"ipc://{tmp_path}/nothing.sock", "--json")
    assert status.returncode == EXIT_UNAVAILABLE and json.loads(status.stdout)["running"] is False


def test_status_json_parses(runtime, tmp_path):
    address = f"ipc://{tmp_path}/json.sock"
    assert guided_start(address, runtime).returncode == 0
    try:
        result = run_cli("engine", "status", "--address", address, "--json", env={"XDG_RUNTIME_DIR": str(runtime)})
        status = json.loads(result.stdout)
        assert result.returncode == 0 and status["running"] and status["model"] == "guided refiner (no checkpoint)"
        assert status["pid"] == EngineClient(address).hello()["pid"] and status["checkpoint"] is None
    finally:
        stop_engine(address, runtime)


def test_a_running_engine_of_another_kind_is_named_not_reused(runtime, tmp_path, seed1_checkpoint):
    address = f"ipc://{tmp_path}/kind.sock"
    assert guided_start(address, runtime).returncode == 0
    try:
        asked = run_cli("engine", "start", "--address", address, "--checkpoint", seed1_checkpoint, "--device", "cpu",
                        env={"XDG_RUNTIME_DIR": str(runtime)})
        assert asked.returncode == EXIT_IN_USE
        assert "it runs guided refiner (no checkpoint), not SparseMat (seed1.pth)" in asked.stderr
        assert "--replace" in asked.stderr
        replaced = run_cli("engine", "start", "--address", address, "--checkpoint", seed1_checkpoint, "--device",
                           "cpu", "--replace", *TEST_ENGINE_IDLE_EXIT, env={"XDG_RUNTIME_DIR": str(runtime)})
        assert replaced.returncode == 0, replaced.stderr
        assert EngineClient(address).hello()["model"] == "SparseMat (seed1.pth)"
    finally:
        stop_engine(address, runtime)


def test_a_tcp_port_another_program_holds_is_one_line_and_its_own_exit_code(runtime):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = run_cli("engine", "serve", "--address", f"tcp://:{port}", "--device", "cpu",
                         env={"XDG_RUNTIME_DIR": str(runtime)})
    finally:
        holder.close()
    assert result.returncode == EXIT_IN_USE
    assert f"tcp://127.0.0.1:{port} is in use by another program" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tcp_address_other_machines_can_reach_needs_allow_remote(runtime):
    result = run_cli("engine", "serve", "--address", "tcp://*:5999", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == EXIT_USAGE and "pass --allow-remote" in result.stderr


@pytest.mark.parametrize("command", ["matte", "serve"])
def test_cuda_n_is_parsed_and_passed_on(command, runtime, tmp_path, reference):
    """On a machine without that GPU the error says so; an unknown device name is a usage error."""
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if command == "matte":
        write_rgb(tmp_path / "f.png", reference["frames"][0])
        run = ("matte", tmp_path / "f.png", tmp_path / "a.exr", "--prior", tmp_path / "f.png")
    else:
        run = ("engine", "serve", "--address", f"ipc://{tmp_path}/gpu.sock", *TEST_ENGINE_IDLE_EXIT)
    result = run_cli(*run, "--device", "cuda:7", env={"XDG_RUNTIME_DIR": str(runtime)})
    no_device = "no such device: cuda:7"
    assert result.returncode == (EXIT_USAGE if command == "matte" else EXIT_FAILED)
    assert no_device in result.stderr, result.stderr
    bad = run_cli(*run, "--device", "gpu0", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert bad.returncode == EXIT_USAGE and "unknown device 'gpu0'" in bad.stderr


def test_a_host_only_install_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['OpenImageIO'] = None\n"
            "from sparsemat.engine.cli import main\n"
            f"sys.exit(main(['matte', {str(tmp_path / 'f.%04d.exr')!r}, {str(tmp_path / 'a.%04d.exr')!r}, "
            f"'--engine', 'ipc://{tmp_path}/e.sock']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr
    assert "needs OpenImageIO, which is not installed here: pip install 'sparsemat[engine]'" in result.stderr


def test_broken_pipes_end_quietly(runtime, tmp_path):
    address = f"ipc://{tmp_path}/pipe.sock"
    assert guided_start(address, runtime).returncode == 0
    try:
        result = subprocess.run(f"sparsemat engine status --address {address} | head -1", shell=True,
                                capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
        assert result.stdout.startswith("address") and "Traceback" not in result.stderr, result.stderr
    finally:
        stop_engine(address, runtime)
