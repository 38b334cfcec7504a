"""``sparsemat engine start|stop|status|serve``: the engine's life as a background process.

``start`` detaches a ``serve`` process (its own session, output to a log file),
writes a pid file, and returns only once the engine answers ``hello``, or fails
with the end of the log. The pid and log files live beside the default socket in
the per-user runtime folder, named after the address.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time

from sparsemat.plugin import protocol
from sparsemat.plugin.client import EngineClient, EngineUnavailable

from .config import EngineConfig


IPC_PATH_LIMIT = 107  # sun_path of a Unix socket address, less its terminating zero


def normalize_address(address: str | None) -> str:
    """Default ipc address; ``tcp://:PORT`` binds to loopback (an explicit host must be asked for)."""
    if not address:
        return protocol.default_address()
    if address.startswith("tcp://:"):
        return "tcp://127.0.0.1:" + address[len("tcp://:"):]
    if not address.startswith(("ipc://", "tcp://")):
        raise ValueError(f"address must start with ipc:// or tcp://, got {address!r}")
    if address.startswith("ipc://") and len(address[len("ipc://"):].encode()) > IPC_PATH_LIMIT:
        raise ValueError(f"the ipc socket path is over the system's {IPC_PATH_LIMIT}-byte limit: {address}")
    return address


def state_files(address: str) -> tuple[str, str]:
    """(pid file, log file) for the engine at ``address``."""
    tag = "engine" if address == protocol.default_address() else "engine-" + hashlib.sha1(address.encode()).hexdigest()[:12]
    folder = protocol.runtime_folder()
    return os.path.join(folder, f"{tag}.pid"), os.path.join(folder, f"{tag}.log")


def _probe(address: str, timeout: float = 2.0) -> dict | None:
    client = EngineClient(address, timeout=timeout, retries=0)
    try:
        return client.status()
    except EngineUnavailable:
        return None
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


def start(config: EngineConfig, wait_s: float = 600.0) -> int:
    address = config.address
    running = _probe(address)
    if running is not None:
        print(f"engine already running at {address} (pid {running['pid']})")
        return 0
    pid_file, log_file = state_files(address)
    command = [sys.executable, "-m", "sparsemat.engine.cli", "engine", "serve", *config.serve_options()]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open(pid_file, "w") as handle:
        handle.write(str(process.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"sparsemat: error: the engine exited with code {process.returncode}:\n{_log_tail(log_file)}",
                  file=sys.stderr)
            return 1
        status = _probe(address, timeout=1.0)
        if status is not None and status["state"] == "ready":
            print(f"engine started at {address} (pid {status['pid']}, {status['device']}); log: {log_file}")
            return 0
        time.sleep(0.2)
    print(f"sparsemat: error: the engine did not answer within {wait_s:.0f} s; log: {log_file}", file=sys.stderr)
    return 1


def _engine_pid(pid: int | None, address: str) -> int | None:
    """``pid`` when it is a live local engine serving ``address``, else None: a pid file outlives
    an engine that crashed, and its pid may since belong to any process."""
    if pid is None or not _alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            arguments = handle.read().decode(errors="replace").split("\0")
    except OSError:  # no /proc (macOS): ask ps
        result = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        arguments = result.stdout.split()
    is_engine = "engine" in arguments and "serve" in arguments
    serves_address = address in arguments or ("--address" not in arguments and address == protocol.default_address())
    return pid if is_engine and serves_address else None


def _pid_file_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def stop(address: str, wait_s: float = 120.0) -> int:
    """Ask the engine to finish its queue and exit; SIGTERM a local one that does not answer."""
    pid_file, _ = state_files(address)
    status = _probe(address)
    if status is not None:
        pid = _engine_pid(status["pid"], address)  # None for an engine on another machine
        client = EngineClient(address, timeout=5.0, retries=0)
        try:
            client.shutdown()
        except EngineUnavailable:
            pass
        finally:
            client.close()
    else:
        pid = _engine_pid(_pid_file_pid(pid_file), address)
        if pid is None:
            print(f"no engine running at {address}")
            _remove(pid_file)
            return 0
        os.kill(pid, signal.SIGTERM)

    def running() -> bool:
        return _alive(pid) if pid is not None else _probe(address, timeout=1.0) is not None

    deadline = time.monotonic() + wait_s
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if running():
        print(f"sparsemat: error: the engine at {address} is still running after {wait_s:.0f} s", file=sys.stderr)
        return 1
    _remove(pid_file)
    print(f"engine at {address} stopped")
    return 0


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def status(address: str) -> int:
    info = _probe(address)
    if info is None:
        print(f"no engine answering at {address}")
        return 1
    print(f"address       {info['address']}\nstate         {info['state']} {info['error']}\n"
          f"pid           {info['pid']}\nuptime        {info['uptime_s']:.0f} s\n"
          f"device        {info['device']}\nmodel         {info['model']}\nstreams       {info['streams']}\n"
          f"memory        {info['memory_bytes'] / 2**20:.1f} MiB of {info['memory_budget_bytes'] / 2**30:.1f} GiB\n"
          f"frames served {info['frames_served']}\nqueue         {info['queue']}{' (busy)' if info['busy'] else ''}")
    return 0


def serve(config: EngineConfig) -> int:
    from .allocator import keep_freed_memory
    from .server import run_engine

    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return run_engine(config)
    finally:
        # An engine that exits on its own (idle, a failed load) leaves no pid file for a later
        # stop to act on; one written for another process is not ours to remove.
        pid_file, _ = state_files(config.address)
        if _pid_file_pid(pid_file) == os.getpid():
            _remove(pid_file)
