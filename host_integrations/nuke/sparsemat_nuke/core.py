"""Everything the SparseMat node does that is not Nuke: plain Python, importable without ``nuke``.

Paths and stream ids, the choice of transport, the request to the engine, the
alpha file, pre-roll, status lines and error messages. The engine client
(``sparsemat.plugin.client``: numpy, pyzmq, msgpack) is imported only when a frame
is matted, so Nuke starts even when those packages are missing, and the node says
what to install. Nothing here imports torch.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shlex
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import exr

OUTPUT_CHANNELS = ("rgba.alpha", "new layer")
DEFAULT_LAYER = "sparsemat"
DEFAULT_COLOURSPACE = "linear"  # Nuke's working space; the internal Write renders it raw


class MatteError(RuntimeError):
    """A frame could not be matted; the message is one line, fit for a node error or a dialog."""


@dataclass(frozen=True)
class Settings:
    """The node's knobs, read in the main thread and handed to the worker as plain values."""
    address: str
    checkpoint: str = ""
    temporal: bool = True
    keyframe_interval: int = 0
    colourspace: str = DEFAULT_COLOURSPACE
    channel: str = "rgba.alpha"  # where the alpha goes in the node's output
    timeout: float = 10.0  # longest silence from the engine, in seconds (not the longest frame)

    def temporal_key(self) -> tuple:
        """Settings that decide whether the engine's temporal state for a stream still applies."""
        return (self.address, self.temporal, self.keyframe_interval if self.temporal else 0, self.colourspace)


def default_address() -> str:
    """The engine client's default: the per-user ipc socket."""
    from sparsemat.plugin import runtime

    return runtime.default_address()


def output_channel(output: str, layer: str) -> str:
    """'rgba.alpha', or '<layer>.alpha' for a new layer (the name checked for what Nuke accepts)."""
    if output == "rgba.alpha":
        return "rgba.alpha"
    name = (layer or "").strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise MatteError(f"layer name {name!r} must be letters, digits and underscores, not starting with a digit")
    if name in ("rgba", "rgb", "alpha", "depth", "mask", "forward", "backward"):
        raise MatteError(f"'{name}' is one of Nuke's own layers; pick a new layer name")
    return f"{name}.alpha"


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


# ---- paths ---------------------------------------------------------------------------------------

_session_lock = threading.Lock()
_session: str | None = None


def session_folder() -> str:
    """This process's private scratch folder (mode 0700), removed when the process exits.

    Under $SPARSEMAT_NUKE_TEMP, else $NUKE_TEMP_DIR, else the system temporary folder. The
    engine reads the plates from here, so it must run as the same user (it does when started
    with ``sparsemat engine start`` or the systemd user unit)."""
    global _session
    with _session_lock:
        if _session is None or not os.path.isdir(_session):
            parent = (os.environ.get("SPARSEMAT_NUKE_TEMP") or os.environ.get("NUKE_TEMP_DIR")
                      or tempfile.gettempdir())
            os.makedirs(parent, exist_ok=True)
            _session = tempfile.mkdtemp(prefix=f"sparsemat-nuke-{os.getpid()}-", dir=parent)
            atexit.register(shutil.rmtree, _session, True)
        return _session


def node_folder(script: str, node: str) -> str:
    """Scratch folder of one node of one script, inside the session folder."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", node)[-40:]
    tag = hashlib.sha1(f"{script}\0{node}".encode()).hexdigest()[:10]
    folder = os.path.join(session_folder(), f"{slug}-{tag}")
    os.makedirs(folder, exist_ok=True)
    return folder


@dataclass(frozen=True)
class Paths:
    """Nuke-style patterns (``####`` for the frame, ``%V`` for the view) of one node's files."""
    source: str  # the plate, rendered by the internal Write (half, raw)
    prior: str  # the prior input's alpha, rendered by the second internal Write
    alpha: str  # the matte, written here, read by the internal Read


def paths(script: str, node: str) -> Paths:
    folder = node_folder(script, node)
    return Paths(*(os.path.join(folder, f"{name}.%V.####.exr") for name in ("source", "prior", "alpha")))


_FRAME_TOKENS = re.compile(r"(#+)|%(0?\d*)d")


def frame_path(pattern: str, frame: int, view: str = "main") -> str:
    """``pattern`` with its frame (``####``, ``%04d``) and view (``%V`` name, ``%v`` initial) filled in,
    as Nuke fills them."""
    def number(match: re.Match) -> str:
        width = len(match.group(1)) if match.group(1) else int(match.group(2) or 0)
        return f"{frame:0{width}d}" if frame >= 0 else f"-{-frame:0{width}d}"

    path = _FRAME_TOKENS.sub(number, pattern)
    return path.replace("%V", view).replace("%v", view[:1])


def stream_id(script: str, node: str, view: str) -> str:
    """The engine's name for one node's sequence: host and process (so sessions never share temporal
    state), script, node and view."""
    return f"nuke:{socket.gethostname()}:{os.getpid()}|{script}|{node}|{view}"


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


tracker = StreamTracker()


# ---- the engine --------------------------------------------------------------------------------------

_clients_lock = threading.Lock()
_clients: dict[tuple, object] = {}
_hello: dict[str, dict] = {}


def engine_command() -> list[str]:
    """How to run ``sparsemat`` to auto-start a local engine: $SPARSEMAT_ENGINE_COMMAND, else ``sparsemat``
    (Nuke's environment rarely has the engine's virtualenv on PATH: set the variable to its full path)."""
    return shlex.split(os.environ.get("SPARSEMAT_ENGINE_COMMAND", "sparsemat")) or ["sparsemat"]


def import_client():
    """The engine client module, or a MatteError saying what to install."""
    try:
        from sparsemat.plugin import client
    except ImportError as exc:
        raise MatteError(f"the SparseMat engine client cannot be imported ({exc}); run install/install_nuke.py "
                         f"for this Nuke's Python version") from exc
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
    """One line for a node error or a dialog."""
    try:
        client_module = import_client()
    except MatteError:
        client_module = None
    if client_module is not None and isinstance(error, client_module.EngineUnavailable):
        return (f"SparseMat engine not answering at {address or 'its address'}: start it with "
                f"'sparsemat engine start --checkpoint FILE' (or fill in the node's checkpoint to start "
                f"a local one automatically)")
    if client_module is not None and isinstance(error, client_module.EngineError):
        return f"SparseMat engine: {error.message} [{error.code}]"
    if isinstance(error, (MatteError, exr.ExrError)):
        return str(error)
    if isinstance(error, OSError):
        return f"SparseMat: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return f"SparseMat: {type(error).__name__}: {error}"


def matte(settings: Settings, stream: str, frame: int, source: str, alpha: str, prior: str | None = None) -> dict:
    """Matte one rendered frame and write its alpha EXR; returns the engine's stats plus ``seconds``
    and ``engine``. Raises the client's EngineError / EngineUnavailable, MatteError or ExrError.

    Local engine: the engine reads ``source`` (and ``prior``) itself. Remote engine: the pixels are read
    here (``exr``, numpy only) and sent inline. The alpha comes back as float32 and is written as a
    one-channel ("A") float EXR, zip compressed. The rendered inputs are removed afterwards."""
    started = time.perf_counter()
    options = {"colourspace": settings.colourspace, "temporal": bool(settings.temporal),
               "keyframe_interval": int(settings.keyframe_interval) if settings.temporal else 0,
               "alpha_dtype": "float32"}
    try:  # from the first engine call on: an unreachable engine must not strand the rendered inputs
        client = client_for(settings)
        state = engine_state(client)
        if transport(settings.address) == "file":
            result, stats = client.matte(stream, frame, path=source, prior_path=prior, **options)
        else:
            pixels = exr.read(source, ("R", "G", "B"))[0]  # float16 as the internal Write renders it
            prior_alpha = None if prior is None else exr.read(prior, ("A",))[0][..., 0]
            result, stats = client.matte(stream, frame, pixels, transport="inline", prior=prior_alpha, **options)
    finally:
        remove_files(source, prior)
    exr.write(alpha, np.asarray(result, dtype=np.float32), ("A",), half=False, compression=exr.ZIP)
    return {**stats, "seconds": time.perf_counter() - started, "engine": state}


def remove_files(*paths: str | None) -> None:
    """Remove rendered scratch files; missing ones (or None) are fine."""
    for path in paths:
        if path:
            try:
                os.remove(path)
            except OSError:
                pass


# ---- what the node shows --------------------------------------------------------------------------------

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


def assert_expression(failed: set[int]) -> str:
    """A Nuke expression, for an Assert node, that is false on exactly the ``failed`` frames."""
    if not failed:
        return "1"
    terms, frames = [], sorted(failed)
    start = previous = frames[0]
    for frame in frames[1:] + [None]:
        if frame is not None and frame == previous + 1:
            previous = frame
            continue
        terms.append(f"frame=={start}" if start == previous else f"(frame>={start}&&frame<={previous})")
        if frame is not None:
            start = previous = frame
    return f"!({'||'.join(terms)})"
