"""What every host integration (Nuke, Blender) does that is not the host: plain Python, no torch.

The settings a host reads from its UI, the choice of transport, scratch folders, stream
ids, frame ranges and pre-roll, the request to the engine and the alpha file, status
lines and one-line error messages. The engine client (pyzmq, msgpack) is imported only
when a frame is matted, so a host starts even when those packages are missing, and the
error says what to install.
"""
from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from sparsemat.plugin import exr

DEFAULT_COLOURSPACE = "linear"  # both hosts render their plates scene-linear, untouched by a view transform
# Frames matted from keyframes per command: their rendered plates wait on disk until it is done.
KEYFRAME_BATCH = 50
CANCEL_GRACE_S = 30  # how long a cancelled command may take to stop before it is killed


class MatteError(RuntimeError):
    """A frame could not be matted; the message is one line, fit for a node error or a report."""


@dataclass(frozen=True)
class Settings:
    """What the host's UI says, read in its main thread and handed to workers as plain values."""
    address: str
    checkpoint: str = ""
    temporal: bool = True
    keyframe_interval: int = 0
    colourspace: str = DEFAULT_COLOURSPACE
    timeout: float = 10.0  # longest silence from the engine, in seconds (not the longest frame)
    trimap_dilation: int = 0  # pixels a trimap's unknown region grows by, when a trimap is given
    foreground: bool = False  # the alpha file also holds the premultiplied foreground (R, G, B)

    def temporal_key(self) -> tuple:
        """Settings that decide whether the engine's temporal state for a stream still applies."""
        return (self.address, self.temporal, self.keyframe_interval if self.temporal else 0, self.colourspace,
                self.trimap_dilation)


def default_address() -> str:
    """The engine client's default: the per-user ipc socket (a loopback port on Windows)."""
    from sparsemat.plugin import runtime

    return runtime.default_address()


# ---- transport ----------------------------------------------------------------------------------

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_local(address: str) -> bool:
    """True when the engine runs on this machine and can read this machine's files."""
    if address.startswith("ipc://"):
        return True
    if address.startswith("tcp://"):
        host = address[len("tcp://"):].rsplit(":", 1)[0]
        return host in LOCAL_HOSTS
    return False


def transport(address: str) -> str:
    """'file' (the engine reads the rendered EXR itself) when local, else 'inline' (pixels in the message)."""
    return "file" if is_local(address) else "inline"


# ---- scratch files and stream names ---------------------------------------------------------------------

_sessions_lock = threading.Lock()
_sessions: dict[str, str] = {}


def session_folder(host: str, environment: tuple[str, ...] = ()) -> str:
    """This process's private scratch folder for ``host`` (mode 0700), removed when the process exits.

    Under the first of the ``environment`` variables that is set, else the system temporary
    folder. The engine reads the plates from here, so it must run as the same user (it does
    when started with ``sparsemat engine start`` or the systemd user unit)."""
    with _sessions_lock:
        folder = _sessions.get(host)
        if folder is None or not os.path.isdir(folder):
            parent = next((os.environ[name] for name in environment if os.environ.get(name)), tempfile.gettempdir())
            os.makedirs(parent, exist_ok=True)
            folder = tempfile.mkdtemp(prefix=f"sparsemat-{host}-{os.getpid()}-", dir=parent)
            atexit.register(shutil.rmtree, folder, True)
            _sessions[host] = folder
        return folder


def forget_session_folders() -> None:
    """Start new scratch folders at the next call (tests, and hosts that change their temp folder)."""
    with _sessions_lock:
        _sessions.clear()


def stream_id(host: str, *names: str) -> str:
    """The engine's name for one sequence: host application, machine and process (so sessions never
    share temporal state), then the host's own names (script, node, view...)."""
    return "|".join((f"{host}:{socket.gethostname()}:{os.getpid()}", *names))


def remove_files(*paths: str | None) -> None:
    """Remove rendered scratch files; missing ones (or None) are fine."""
    for path in paths:
        if path:
            try:
                os.remove(path)
            except OSError:
                pass


# ---- frame ranges and pre-roll -------------------------------------------------------------------------

def parse_frames(text: str, first: int, last: int) -> list[int]:
    """Frames of ``1-10``, ``1-10x2``, ``1,3,5-7`` or ``12`` (``sparsemat matte --frames``' grammar);
    the empty string means first-last."""
    from sparsemat.plugin.frames import parse_frame_range

    if not (text or "").strip():
        return list(range(first, last + 1))
    try:
        return parse_frame_range(text)
    except ValueError as exc:
        raise MatteError(str(exc)) from None


def with_preroll(frames: list[int], settings: Settings, last_matted: int | None, first_available: int
                 ) -> list[int]:
    """The frames to matte, in order, so that each frame's alpha is what a render of the whole range
    gives: with a keyframe interval, a run that does not continue the stream is preceded by the
    frames since the last keyframe (no further back than the input's first frame), as
    ``sparsemat matte --keyframe-interval`` does. Pre-rolled frames are correct alphas too."""
    from sparsemat.plugin.frames import with_preroll as plan

    interval = settings.keyframe_interval if settings.temporal else 0
    return [frame for frame, _ in plan(frames, interval, lambda frame: frame >= first_available, last_matted)]


class StreamTracker:
    """The last frame this process matted per stream, and with which settings (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: dict[str, tuple[tuple, int]] = {}

    def last(self, stream: str, settings: Settings) -> int | None:
        with self._lock:
            key, frame = self._last.get(stream, (None, None))
            return frame if key == settings.temporal_key() else None

    def matted(self, stream: str, settings: Settings, frame: int | None) -> None:
        with self._lock:
            if frame is None:
                self._last.pop(stream, None)
            else:
                self._last[stream] = (settings.temporal_key(), frame)


# ---- the engine --------------------------------------------------------------------------------------

_clients_lock = threading.Lock()
_clients: dict[tuple, object] = {}
_hello: dict[str, dict] = {}


def engine_command() -> list[str]:
    """How to run ``sparsemat`` to auto-start a local engine: $SPARSEMAT_ENGINE_COMMAND, else ``sparsemat``
    (a host's environment rarely has the engine's virtualenv on PATH: set the variable to its full path)."""
    return shlex.split(os.environ.get("SPARSEMAT_ENGINE_COMMAND", "sparsemat")) or ["sparsemat"]


def import_client():
    """The engine client module, or a MatteError saying what to install."""
    try:
        from sparsemat.plugin import client
    except ImportError as exc:
        raise MatteError(f"the SparseMat engine client cannot be imported ({exc}); run SparseMat's installer "
                         f"(install/install_nuke.py or install/install_blender.py) for this application") from exc
    return client


def client_for(settings: Settings):
    """One shared client per address, timeout and checkpoint (EngineClient is thread-safe)."""
    client_module = import_client()
    key = (settings.address, float(settings.timeout), settings.checkpoint if is_local(settings.address) else "")
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            autostart = None
            if key[2]:
                autostart = client_module.start_command(settings.checkpoint, command=engine_command())
            client = client_module.EngineClient(settings.address, timeout=max(0.1, float(settings.timeout)),
                                                autostart=autostart)
            _clients[key] = client
        return client


def engine_state(client) -> str:
    """'cpu, SparseMat (x.pth)': the engine's device and model, asked once per address."""
    if client.address not in _hello:
        _hello[client.address] = client.hello()
    hello = _hello[client.address]
    return f"{hello.get('device', '?')}, {hello.get('model', '?')}"


def describe(error: BaseException, address: str = "") -> str:
    """One line for a node error, a dialog or a report."""
    try:
        client_module = import_client()
    except MatteError:
        client_module = None
    if client_module is not None and isinstance(error, client_module.EngineUnavailable):
        return (f"SparseMat engine not answering at {address or 'its address'}: start it with "
                f"'sparsemat engine start --checkpoint FILE' (or give a checkpoint in SparseMat's settings "
                f"to start a local one automatically)")
    if client_module is not None and isinstance(error, client_module.EngineError):
        return f"SparseMat engine: {error.message} [{error.code}]"
    if isinstance(error, (MatteError, exr.ExrError)):
        return str(error)
    if isinstance(error, OSError):
        return f"SparseMat: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return f"SparseMat: {type(error).__name__}: {error}"


def matte(settings: Settings, stream: str, frame: int, source: str, alpha: str, prior: str | None = None,
          trimap: str | None = None, clean_plate: str | None = None) -> dict:
    """Matte one rendered frame and write its alpha EXR; returns the engine's stats plus ``seconds``
    and ``engine``. Raises the client's EngineError / EngineUnavailable, MatteError or ExrError.

    ``prior`` and ``trimap``: rendered one-channel ("A") EXRs of the frame's guides, ``clean_plate`` an
    RGB one, rendered as ``source`` is; each None when not given.
    Local engine: the engine reads ``source`` (and the guides) itself. Remote engine: the pixels are
    read here (``exr``, numpy only) and sent inline. The alpha comes back as float32 and is written as a
    one-channel ("A") float EXR, zip compressed. The rendered inputs are removed afterwards."""
    started = time.perf_counter()
    options = {"colourspace": settings.colourspace, "temporal": bool(settings.temporal),
               "keyframe_interval": int(settings.keyframe_interval) if settings.temporal else 0,
               "alpha_dtype": "float32"}
    if trimap is not None:
        options["trimap_dilation"] = int(settings.trimap_dilation)
    if settings.foreground:
        options["foreground"] = True
    try:  # from the first engine call on: an unreachable engine must not strand the rendered inputs
        client = client_for(settings)
        state = engine_state(client)
        if transport(settings.address) == "file":
            result, stats = client.matte(stream, frame, path=source, prior_path=prior, trimap_path=trimap,
                                         clean_plate_path=clean_plate, **options)
        else:
            pixels, plate = (None if picture is None else exr.read(picture, ("R", "G", "B"))[0]
                             for picture in (source, clean_plate))
            prior_alpha, trimap_alpha = (None if guide is None else exr.read(guide, ("A",))[0][..., 0]
                                         for guide in (prior, trimap))
            result, stats = client.matte(stream, frame, pixels, transport="inline", prior=prior_alpha,
                                         trimap=trimap_alpha, clean_plate=plate, **options)
    finally:
        remove_files(source, prior, trimap, clean_plate)
    result = np.asarray(result, dtype=np.float32)
    if settings.foreground:
        exr.write(alpha, np.dstack([stats.pop("foreground")[..., :3], result]), ("R", "G", "B", "A"), half=False,
                  compression=exr.ZIP)
    else:
        exr.write(alpha, result, ("A",), half=False, compression=exr.ZIP)
    return {**stats, "seconds": time.perf_counter() - started, "engine": state}


def keyframe_plates(frames: list[int], keyframes: list[int], first: int, last: int) -> list[int]:
    """The plate frames that matting ``frames`` from ``keyframes`` reads, in order: the frames and,
    for each frame that is not a keyframe, the keyframes either side of it (its matte is carried
    from theirs). MatteError for a keyframe outside the input's ``first``-``last``."""
    if not keyframes:
        raise MatteError("no keyframes: give the frames whose matte the Keyframes input holds, such as 1,40")
    outside = [key for key in keyframes if not first <= key <= last]
    if outside:
        raise MatteError(f"keyframe {outside[0]} is outside the input's frames {first}-{last}")
    from sparsemat.plugin.frames import keyframes_around

    needed = set(frames)
    for frame in frames:
        if frame not in keyframes:
            needed.update(key for key in keyframes_around(frame, keyframes) if key is not None)
    return sorted(needed)


def matte_from_keyframes(settings: Settings, source: str, keyframe_mattes: dict[int, str], alpha: str,
                         frames: list[int], on_frame=None, cancelled=None) -> dict[int, str]:
    """Matte ``frames`` from an artist's mattes on a few frames, by ``sparsemat matte --keyframe-alpha``
    sending each frame to the engine at ``settings.address`` (started first, as ``matte`` starts it):
    carrying a keyframe's matte takes the optical flow between two plates (OpenCV, with the engine's
    command line), which a host's Python has not.

    ``source``, ``alpha``: patterns (``####`` or ``%04d``) of the rendered plates, which must hold every
    frame of ``keyframe_plates``, and of the mattes to write; ``keyframe_mattes``: keyframe -> its matte
    (a one-channel "A" EXR). ``on_frame(done, total, text)`` after each frame; ``cancelled()`` is asked
    after each line the command prints (a frame or so), and stops it as Ctrl-C would. Returns the
    frames that were not written -> why; raises MatteError when none could be (the command's own
    one-line message), the engine's errors as ``matte`` does, and MatteError("cancelled")."""
    engine_state(client_for(settings))  # a local engine is started here, with the node's checkpoint
    command = [*engine_command(), "matte", source, alpha, "--frames", ",".join(str(frame) for frame in frames),
               "--engine", settings.address, "--input-colorspace", settings.colourspace, "--quiet",
               "--openjd-progress", *(f"--keyframe-alpha={key}={path}" for key, path in sorted(keyframe_mattes.items()))]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   encoding="utf-8", errors="replace", env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    except OSError as exc:
        raise MatteError(f"cannot run {command[0]} to matte from keyframes ({exc.strerror or exc}); set "
                         f"SPARSEMAT_ENGINE_COMMAND to the engine's sparsemat command") from exc
    failed: dict[int, str] = {}
    written: set[int] = set()
    last_error, fatal, tail = "", "", ""
    with process:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail = line or tail
            if line.startswith("error: "):
                last_error = line[len("error: "):]
            elif line.startswith("sparsemat: error: "):
                fatal = line[len("sparsemat: error: "):]
            elif line.startswith("openjd_status: frame "):
                text, _, count = line[len("openjd_status: "):].rpartition(" (")
                number, _, outcome = text[len("frame "):].partition(" ")
                if outcome == "written":
                    written.add(int(number))
                else:
                    failed[int(number)] = last_error or f"frame {number} failed"
                if on_frame is not None:
                    done, _, total = count.rstrip(")").partition("/")
                    on_frame(int(done), int(total), text)
            if cancelled is not None and cancelled():
                process.send_signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)  # lets it clean up
                try:
                    process.wait(timeout=CANCEL_GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                raise MatteError("cancelled")
    if not written and not failed:
        raise MatteError(fatal or f"sparsemat matte --keyframe-alpha stopped (exit {process.returncode}): {tail}")
    stopped = fatal or f"not matted: sparsemat matte stopped (exit {process.returncode}): {tail}"
    return {**{frame: stopped for frame in frames if frame not in written}, **failed}


def status_line(frame: int, stats: dict) -> str:
    """'frame 12: 0.84 s, active 3.2% (temporal), engine cpu, SparseMat (x.pth)'. The mode is the engine's
    (full, cascade, rescale, guided), or temporal for a full frame that reused the previous one."""
    mode = stats.get("mode", "full")
    if mode == "full" and stats.get("reused"):  # cascade and rescale refine without the previous frame
        mode = "temporal"
    text = (f"frame {frame}: {stats.get('seconds', 0.0):.2f} s, active {stats.get('active_fraction', 0.0):.1%} "
            f"({mode}), engine {stats.get('engine', '?')}")
    if stats.get("note"):
        text += f"; {stats['note']}"
    return text
