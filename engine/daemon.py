"""``sparsemat engine start|stop|status|serve``: the engine's life as a background process.

One engine per address: ``serve`` holds an exclusive lock on a file beside the socket (in the
runtime folder for tcp) for its whole life, and writes its pid there; a second ``serve`` on the
address is refused (``EXIT_IN_USE``), so two ``start``s racing end with one engine, which both
report. ``stop`` and ``status`` find the engine by asking it, else through the lock. ``start``
detaches a ``serve`` process (its own session, output to a log file) and returns only once the
engine answers ``hello``, or fails with what this start wrote to the log.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

from sparsemat.plugin import runtime
from sparsemat.plugin.client import EngineClient, EngineUnavailable

from .config import EngineConfig
from .validation import EXIT_FAILED, EXIT_IN_USE, EXIT_UNAVAILABLE, UsageError

IPC_PATH_LIMIT = 107  # sun_path of a Unix socket address, less its terminating zero
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
log = logging.getLogger("sparsemat.engine")


class AddressInUse(UsageError):
    """Another engine (or program) serves the address."""

    exit_code = EXIT_IN_USE


def normalize_address(address: str | None, allow_remote: bool = False) -> str:
    """The default ipc address, or ``address`` checked: ``tcp://:PORT`` binds to loopback, and
    any other host (``tcp://*:PORT``, ``tcp://0.0.0.0:PORT``, an interface) needs ``allow_remote``.
    ValueError says what is wrong."""
    if not address:
        return runtime.default_address()
    if address.startswith("tcp://:"):
        return "tcp://127.0.0.1:" + address[len("tcp://:"):]
    if address.startswith("tcp://"):
        host = address[len("tcp://"):].rpartition(":")[0]
        if host not in LOOPBACK_HOSTS and not allow_remote:
            raise ValueError(f"{address} would accept connections from other machines, with no authentication: "
                             f"pass --allow-remote to mean it, or use tcp://:PORT for this machine only")
        return address
    if not address.startswith("ipc://"):
        raise ValueError(f"address must start with ipc:// or tcp://, got {address!r}")
    if len(address[len("ipc://"):].encode()) > IPC_PATH_LIMIT:
        raise ValueError(f"the ipc socket path is over the system's {IPC_PATH_LIMIT}-byte limit: {address}")
    return address


def _tag(address: str) -> str:
    return "engine" if address == runtime.default_address() else "engine-" + hashlib.sha1(address.encode()).hexdigest()[:12]


def log_file(address: str) -> str:
    return os.path.join(runtime.runtime_folder(), f"{_tag(address)}.log")


def lock_file(address: str) -> str:
    """Beside the socket for ipc (so it goes with the socket's folder), else in the runtime folder."""
    if address.startswith("ipc://"):
        return address[len("ipc://"):] + ".lock"
    return os.path.join(runtime.runtime_folder(), f"{_tag(address)}.lock")


class EngineLock:
    """The lock a serving engine holds on ``lock_file(address)``, with its pid in the file."""

    def __init__(self, address: str):
        self.path = lock_file(address)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True once held; False when another live engine holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def still_ours(self) -> bool:
        """False once the lock file is gone or replaced (its folder deleted, a cleaner): the engine
        can no longer be found, so it should go."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(address: str) -> int | None:
    """The pid of the live engine holding the address's lock, or None (no lock file, or a stale
    one: nobody holds it)."""
    try:
        fd = os.open(lock_file(address), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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


def _log_since(path: str, offset: int, lines: int = 8) -> str:
    """The last ``lines`` lines written to the log from ``offset`` on: this start's, not earlier ones'."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _mismatch(status: dict, config: EngineConfig) -> str:
    """How the running engine differs from what ``config`` asks for, or ''."""
    differences = []
    if (status.get("checkpoint") or None) != config.checkpoint:
        differences.append(f"it runs {status['model']}, not {_model_name(config)}")
    device = status.get("device", "")
    if config.device not in ("auto", device, device.split(":")[0]) and not (config.device == "cuda" and
                                                                           device == "cuda:0"):
        differences.append(f"on {device}, not {config.device}")
    return " ".join(differences)


def _model_name(config: EngineConfig) -> str:
    return f"SparseMat ({os.path.basename(config.checkpoint)})" if config.checkpoint else "guided refiner (no checkpoint)"


def start(config: EngineConfig, replace: bool = False, logfile: str | None = None, wait_s: float = 600.0) -> int:
    """A detached engine for ``config``, its output appended to ``logfile`` (default: the
    address's log in the runtime folder); returns once it is ready."""
    address = config.address
    deadline = time.monotonic() + wait_s
    running = _probe(address)
    if running is not None:
        different = _mismatch(running, config)
        if not different:
            return _report_running(address, deadline)
        if not replace:
            print(f"sparsemat: error: an engine already runs at {address} (pid {running['pid']}), but {different}: "
                  f"stop it first (sparsemat engine stop --address {address}) or pass --replace", file=sys.stderr)
            return EXIT_IN_USE
        if stop(address) != 0:
            return EXIT_FAILED
    logfile = logfile or log_file(address)
    command = [sys.executable, "-m", "sparsemat.engine.cli", "engine", "serve", *config.serve_options()]
    with open(logfile, "ab") as handle:
        offset = handle.tell()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
                                   start_new_session=True)
    while time.monotonic() < deadline:
        code = process.poll()
        if code == EXIT_IN_USE:  # another start won the race: that one engine is the answer
            return _report_running(address, deadline)
        if code is not None:
            print(f"sparsemat: error: the engine exited with code {code} (log: {logfile}):\n"
                  f"{_log_since(logfile, offset)}", file=sys.stderr)
            return EXIT_FAILED
        status = _probe(address, timeout=1.0)
        if status is not None and status["state"] == "ready" and status["pid"] == process.pid:
            print(f"engine started at {address} (pid {status['pid']}, {status['device']}); log: {logfile}")
            return 0
        time.sleep(0.2)
    print(f"sparsemat: error: the engine did not answer within {wait_s:.0f} s; log: {logfile}", file=sys.stderr)
    return EXIT_FAILED


def _report_running(address: str, deadline: float) -> int:
    """Once the engine at ``address`` is ready (it may still be loading), say so: 0, or
    EXIT_FAILED if its model failed to load or it never got ready."""
    while True:
        status = _probe(address, timeout=1.0)
        if status is not None and status["state"] != "loading":
            break
        if status is None and _engine_pid(lock_holder(address)) is None:
            print(f"sparsemat: error: the engine at {address} exited before it was ready; log: {log_file(address)}",
                  file=sys.stderr)
            return EXIT_FAILED
        if time.monotonic() > deadline:
            print(f"sparsemat: error: the engine at {address} did not get ready in time", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.2)
    if status["state"] == "failed":
        print(f"sparsemat: error: the engine at {address} (pid {status['pid']}): {status['error']}", file=sys.stderr)
        return EXIT_FAILED
    print(f"engine already running at {address} (pid {status['pid']}, {status['model']} on {status['device']})")
    return 0


def _engine_pid(pid: int | None) -> int | None:
    """``pid`` when it is a live local engine process, else None: the pid an engine reported, or
    a lock file's, may since belong to any process."""
    if pid is None or not _alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            arguments = handle.read().decode(errors="replace").split("\0")
    except OSError:  # no /proc (macOS): ask ps
        result = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        arguments = result.stdout.split()
    return pid if "engine" in arguments and "serve" in arguments else None


def stop(address: str, wait_s: float = 120.0) -> int:
    """Ask the engine to finish its queue and exit; SIGTERM a local one that does not answer."""
    status = _probe(address)
    if status is not None:
        pid = _engine_pid(status["pid"])  # None for an engine on another machine
        client = EngineClient(address, timeout=5.0, retries=0)
        try:
            client.shutdown()
        except EngineUnavailable:
            pass
        finally:
            client.close()
    else:
        pid = _engine_pid(lock_holder(address))
        if pid is None:
            print(f"no engine running at {address}")
            return 0
        print(f"the engine at {address} (pid {pid}) does not answer: sending it SIGTERM")
        os.kill(pid, signal.SIGTERM)

    def running() -> bool:
        return _alive(pid) if pid is not None else _probe(address, timeout=1.0) is not None

    deadline = time.monotonic() + wait_s
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if running():
        print(f"sparsemat: error: the engine at {address} is still running after {wait_s:.0f} s", file=sys.stderr)
        return EXIT_FAILED
    print(f"engine at {address} stopped")
    return 0


def status(address: str, as_json: bool = False) -> int:
    """The engine's status; EXIT_UNAVAILABLE when none answers (with the pid of one that holds
    the address's lock without answering)."""
    info = _probe(address)
    if info is None:
        holder = _engine_pid(lock_holder(address))
        if as_json:
            print(json.dumps({"running": False, "address": address, "lock_holder": holder}))
        elif holder is not None:
            print(f"no engine answering at {address}, but pid {holder} holds its lock (stuck, or still starting?)")
        else:
            print(f"no engine answering at {address}")
        return EXIT_UNAVAILABLE
    if as_json:
        print(json.dumps({"running": True, **info}))
        return 0
    print(f"address       {info['address']}\nstate         {info['state']} {info['error']}\n"
          f"pid           {info['pid']}\nuptime        {info['uptime_s']:.0f} s\n"
          f"device        {info['device']}\nmodel         {info['model']}\nstreams       {info['streams']}\n"
          f"memory        {info['memory_bytes'] / 2**20:.1f} MiB of {info['memory_budget_bytes'] / 2**30:.1f} GiB\n"
          f"frames served {info['frames_served']}\nqueue         {info['queue']}{' (busy)' if info['busy'] else ''}")
    return 0


def serve(config: EngineConfig) -> int:
    """Serve in the foreground until stopped. EXIT_IN_USE when another engine serves the address."""
    import zmq

    from .allocator import keep_freed_memory
    from .server import run_engine

    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if config.address.startswith("ipc://"):
        folder = os.path.dirname(config.address[len("ipc://"):]) or "."
        if not os.path.isdir(folder):
            runtime.private_folder(folder)  # a folder the engine makes is private; one given is the user's
    lock = EngineLock(config.address)
    if not lock.acquire():
        raise AddressInUse(f"an engine already serves {config.address} (pid {lock_holder(config.address)})")
    try:
        if config.address.startswith("ipc://") and os.path.exists(config.address[len("ipc://"):]):
            foreign = _probe(config.address, timeout=1.0)  # an engine without our lock (an older version)
            if foreign is not None:
                raise AddressInUse(f"an engine already serves {config.address} (pid {foreign['pid']})")
        def findable() -> bool:  # clients find the engine by its socket, stop and status by its lock
            socket = config.address[len("ipc://"):] if config.address.startswith("ipc://") else None
            return lock.still_ours() and (socket is None or os.path.exists(socket))

        try:
            return run_engine(config, findable)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE:
                raise AddressInUse(f"{config.address} is in use by another program") from exc
            raise UsageError(f"cannot serve {config.address}: {exc}") from exc
    finally:
        if config.address.startswith("ipc://") and lock.still_ours():
            try:
                os.remove(config.address[len("ipc://"):])
            except FileNotFoundError:
                pass
        lock.release()

