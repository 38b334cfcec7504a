"""Host-side engine client: numpy, pyzmq and msgpack only, so it loads inside Nuke's Python.

Reliability follows the zguide's Lazy Pirate pattern: every request has a timeout;
on silence the socket is thrown away (dropping whatever it still queued), the
engine is optionally started, and the request is sent again, a bounded number
of times, before a clear :class:`EngineUnavailable`. A frame can legitimately
take a long time on a CPU engine, so while waiting the client pings ``status``
(which the engine answers at once even when busy): the timeout measures the
engine's silence, not the frame's compute time. Each ping names the request it
waits for, and an engine that does not hold it (one restarted since, or one that
could not read it) says so: the request is sent again at once instead of waiting
on an engine that will never answer it. Retries send the same message again from the
same routing id (one per client, kept across reconnects); the engine answers a repeated
request from its cache instead of computing twice.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from typing import Callable, Sequence

import numpy as np
import zmq

from . import protocol, runtime
from .shared_block import SharedBlock

_DTYPE_NAMES = {np.dtype(v): k for k, v in protocol.DTYPES.items()}
log = logging.getLogger("sparsemat.plugin")


_SILENT, _LOST, _GONE = "silent", "lost", "gone"  # why _wait returned no reply


def _guide_array(values, name: str) -> np.ndarray:
    """A prior or a trimap as a pixel block's array: (H, W) or (H, W, 1); float64 (numpy's
    default) as float32."""
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f"a {name} must be (H, W) or (H, W, 1), got shape {values.shape}")
    return values.astype(np.float32) if values.dtype == np.float64 else values


def _check_size(message: list) -> None:
    """Refuse, before sending, what the engine would refuse without being able to say to whom."""
    if len(message[0]) > protocol.MAX_HEADER_BYTES:
        raise ValueError(f"the request header is {len(message[0])} bytes, over the protocol's "
                         f"{protocol.MAX_HEADER_BYTES}-byte limit (a very long stream name or path?)")
    if len(message) > 1:  # pixels inline: only they can make a message too large
        total = len(message[0]) + sum(memoryview(part).nbytes for part in message[1:])
        if total > protocol.MAX_MESSAGE_BYTES:
            raise ValueError(f"the request is {total} bytes, over the protocol's {protocol.MAX_MESSAGE_BYTES}-byte "
                             f"message limit: send the pixels through shared memory or a file")


class EngineError(RuntimeError):
    """The engine answered with an error; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class EngineUnavailable(EngineError):
    def __init__(self, message: str):
        super().__init__("unavailable", message)


AUTOSTART_IDLE_EXIT_S = 900.0  # an engine a host started for itself stops after this long without work


def start_command(checkpoint: str | None, device: str = "auto", command: Sequence[str] = ("sparsemat",),
                  exit_when_idle: float = AUTOSTART_IDLE_EXIT_S) -> Callable[[str], None]:
    """An ``autostart`` for EngineClient: runs ``sparsemat engine start`` for the address (waits until
    it answers). ``checkpoint`` None starts the weight-free guided refiner (every request then
    needs a prior, a trimap or a clean plate). The engine stops itself after ``exit_when_idle`` seconds without work (0:
    never), so a host that exits (a ``nuke -x`` render) leaves no engine behind for long."""
    options = ["--device", device, "--exit-when-idle", repr(float(exit_when_idle))]
    if checkpoint:
        options += ["--checkpoint", checkpoint]

    def start(address: str) -> None:
        subprocess.run([*command, "engine", "start", "--address", address, *options], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


def nobody_listens(address: str) -> str:
    """Why ``listening(address)`` said no, in words."""
    if address.startswith("ipc://"):
        return f"its socket file {address[len('ipc://'):]} does not exist"
    return "the connection is refused"


def listening(address: str) -> bool:
    """False when nothing can be listening at ``address``: an ipc socket file that does not exist,
    or a refused tcp connection (found in about a second); True otherwise, which ZeroMQ's own
    timeouts then decide."""
    if address.startswith("ipc://"):
        return os.path.exists(address[len("ipc://"):])
    host, _, port = address[len("tcp://"):].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
    except ConnectionRefusedError:
        return False
    except (OSError, ValueError):
        pass
    return True


class EngineClient:
    """A connection to one engine. Thread-safe: requests from several threads are serialized."""

    def __init__(self, address: str | None = None, timeout: float = 10.0, retries: int = 2, heartbeat: float = 1.0,
                 autostart: Callable[[str], None] | None = None):
        self.address = address or runtime.default_address()
        self.timeout = timeout  # longest silence from the engine, not the longest frame
        self.retries = retries
        self.heartbeat = heartbeat
        self.autostart = autostart
        self._context = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Unique across clients and processes: request ids and the routing id the engine knows this
        # client by, across its reconnects (a retry is answered from the engine's cache).
        self._prefix = uuid.uuid4().hex
        # Shared-memory blocks by role: "image" (with the alpha slots), "prior", "trimap", "clean_plate".
        self._blocks: dict[str, SharedBlock] = {}
        self._refused: dict[str, int] = {}  # by role, the smallest size the system had no room for
        self._engine_minor: int | None = None  # the engine's protocol_minor, asked once it matters

    # ---- operations ----------------------------------------------------------------------------
    def hello(self) -> dict:
        return self._request({"op": "hello"})[0]

    def status(self) -> dict:
        return self._request({"op": "status"})[0]

    def reset(self, stream: str) -> bool:
        return self._request({"op": "reset", "stream": stream})[0]["dropped"]

    def shutdown(self) -> None:
        self._request({"op": "shutdown"}, retries=0)

    def matte(self, stream: str, frame: int, image: np.ndarray | None = None, *, path: str | None = None,
              transport: str = "inline", colourspace: str | None = None, prior: np.ndarray | None = None,
              prior_path: str | None = None, trimap: np.ndarray | None = None, trimap_path: str | None = None,
              trimap_dilation: int = 0, clean_plate: np.ndarray | None = None, clean_plate_path: str | None = None,
              foreground: bool = False, foreground_colours: np.ndarray | None = None, temporal: bool = True, keyframe_interval: int = 0, alpha_dtype: str = "float32",
              max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
        """Alpha (H, W; copy it to change it) and the frame's stats. ``image``: (H, W, C) uint8/uint16/float16/float32 with
        C in 1, 3, 4, sent ``inline`` or through ``shm`` (shared memory, for an engine on this Linux
        machine; inline elsewhere, and, with a logged warning, when the system has no room for the
        block); or ``path`` of a file the engine reads.
        The optional coarse alpha: ``prior`` ((H, W) or (H, W, 1) at any resolution, of the image's
        dtypes, integers scaled to [0, 1] as the image's are; float64 is sent as float32), sent by
        ``transport`` as the image is, in a block of its own through ``shm``; or ``prior_path`` (a file).
        The optional trimap: ``trimap`` or ``trimap_path``, as the prior (0 background, 1
        foreground, anything between unknown; any resolution of the image's aspect), its unknown
        region grown by ``trimap_dilation`` pixels; it needs an engine of protocol 1.2 or later
        (an older one would ignore it): EngineError ``old_engine`` otherwise.
        The optional clean plate (the shot without the subject, the image's size, dtype and
        colourspace): ``clean_plate`` (sent as the image is) or ``clean_plate_path``; not with a
        prior; protocol 1.2 too.
        ``foreground``: also return the premultiplied foreground, (H, W, 4) float32 RGBA, as
        ``stats["foreground"]``; unmixed from the image's own colours (sRGB decoded, others as
        sent, or a file's as ``sparsemat matte`` reads it), or from ``foreground_colours`` (H, W, 3)
        float32 when given. Protocol 1.2.
        Through ``shm`` the alpha is a view of this client's block, not a copy; it stays valid for
        as long as anything refers to it, and its slot is reused only once nothing does (see
        shared_block.py). Keep ``alpha.copy()`` to collect many."""
        header = {"op": "matte", "stream": stream, "frame": int(frame), "temporal": temporal,
                  "keyframe_interval": keyframe_interval, "alpha_dtype": alpha_dtype}
        if colourspace is not None:
            header["colourspace"] = colourspace
        if max_pixels is not None:
            header["max_pixels"] = int(max_pixels)
        if image is None and path is None:
            raise ValueError("matte needs an image array or a path")
        if alpha_dtype not in protocol.ALPHA_DTYPES:
            raise ValueError(f"alpha_dtype must be one of {', '.join(protocol.ALPHA_DTYPES)}, got {alpha_dtype!r}")
        if trimap is not None or trimap_path is not None:
            self._require_minor(2, "a trimap")
            header["trimap_dilation"] = int(trimap_dilation)
        if clean_plate is not None or clean_plate_path is not None:
            self._require_minor(2, "a clean plate")
        if foreground:
            self._require_minor(2, "a foreground")
            header["foreground"] = True
        # The lock covers the shared-memory block too: threads must not overwrite each other's frames.
        with self._lock:
            payload: list = []
            slot = None  # the block's alpha slot the engine writes into, when there is one
            if path is not None:
                header["image"] = {"transport": "file", "path": os.path.abspath(path)}
            else:
                header["image"] = self._pixel_block(image, transport, payload, "image")
                slot = self._blocks["image"].free_slot() if header["image"]["transport"] == "shm" else None
                if slot is not None:  # else every slot's alpha is still held: this one comes inline
                    header["alpha_shm_offset"] = self._blocks["image"].slot_offset(slot)
            if prior_path is not None:
                header["prior"] = {"transport": "file", "path": os.path.abspath(prior_path)}
            elif prior is not None:
                header["prior"] = self._pixel_block(_guide_array(prior, "prior"), transport, payload, "prior")
            if trimap_path is not None:
                header["trimap"] = {"transport": "file", "path": os.path.abspath(trimap_path)}
            elif trimap is not None:
                header["trimap"] = self._pixel_block(_guide_array(trimap, "trimap"), transport, payload, "trimap")
            if clean_plate_path is not None:
                header["clean_plate"] = {"transport": "file", "path": os.path.abspath(clean_plate_path)}
            elif clean_plate is not None:
                header["clean_plate"] = self._pixel_block(np.asarray(clean_plate), transport, payload, "clean_plate")
            if foreground and foreground_colours is not None:
                header["foreground_colours"] = self._pixel_block(np.asarray(foreground_colours, np.float32), transport,
                                                                 payload, "foreground_colours")
            lent = []  # the alpha's view of its slot, made while the engine computes: it then costs no time

            def lend():
                lent.append(self._blocks["image"].alpha(slot, protocol.DTYPES[alpha_dtype], image.shape[:2]))

            reply, frames = self._request_locked(header, payload, self.retries, None if slot is None else lend)
            if reply.get("alpha_in_shm"):
                alpha = lent[0]
            else:
                alpha = np.frombuffer(frames[0], dtype=protocol.DTYPES[reply["dtype"]]).reshape(reply["shape"])
            stats = reply["stats"]
            if "foreground" in reply:  # its payload frame, counted as the request's are (the header is 0)
                block = reply["foreground"]
                stats["foreground"] = np.frombuffer(frames[block["frame"] - 1], dtype=np.float32).reshape(block["shape"])
        return alpha, stats

    def _require_minor(self, minor: int, what: str) -> None:
        """EngineError unless the engine speaks 1.``minor`` or later: an older one ignores fields
        it does not know, and would send back a different matte without a word."""
        if self._engine_minor is None:
            self._engine_minor = int(self.hello().get("protocol_minor", 0))
        if self._engine_minor < minor:
            raise EngineError("old_engine", f"the engine at {self.address} speaks protocol {protocol.VERSION}."
                                            f"{self._engine_minor}; {what} needs {protocol.VERSION}.{minor} or "
                                            f"later: update the engine (sparsemat engine stop, then start)")

    def close(self) -> None:
        with self._lock:
            self._drop_socket()
            self._drop_shared_memory()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- pixels ------------------------------------------------------------------------------
    def _pixel_block(self, pixels: np.ndarray, transport: str, payload: list, role: str) -> dict:
        pixels = np.ascontiguousarray(pixels)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.dtype not in _DTYPE_NAMES:
            raise ValueError(f"pixels of dtype {pixels.dtype} cannot be sent; use one of {', '.join(protocol.DTYPES)}")
        block = {"shape": list(pixels.shape), "dtype": _DTYPE_NAMES[pixels.dtype], "transport": transport}
        if transport == "inline":
            payload.append(memoryview(pixels).cast("B"))
            block["frame"] = len(payload)
        elif transport == "shm":
            name = self._copy_to_shared_memory(pixels, role) if protocol.SHARED_MEMORY else None
            if name is None:
                return self._pixel_block(pixels, "inline", payload, role)
            block["shm"] = name
        else:
            raise ValueError(f"transport must be 'inline' or 'shm' for pixels, got {transport!r}")
        return block

    def _copy_to_shared_memory(self, pixels: np.ndarray, role: str) -> str | None:
        """The pixels into this client's block for ``role`` (grown as needed), whose name it returns;
        None when the system has no room for a block that large: the caller sends the pixels inline."""
        alpha_bytes = pixels.shape[0] * pixels.shape[1] * 4 if role == "image" else 0  # room for a float32 alpha
        block = self._blocks.get(role)
        if block is None or not block.fits(pixels.nbytes, alpha_bytes):
            refused = self._refused.get(role)
            if refused is not None and pixels.nbytes >= refused:
                return None
            if block is not None:
                block.close()
                del self._blocks[role]
            try:
                block = self._blocks[role] = SharedBlock(pixels.nbytes, alpha_bytes)
            except OSError as exc:
                self._refused[role] = pixels.nbytes
                log.warning("shared memory: no room for a %d-byte %s block (%s); sending %s pixels this large inline",
                            pixels.nbytes, role, exc.strerror or exc, role)
                return None
        block.write_pixels(pixels)
        return block.name

    def _drop_shared_memory(self) -> None:
        while self._blocks:
            self._blocks.popitem()[1].close()

    # ---- the Lazy Pirate loop ------------------------------------------------------------------
    def _request(self, header: dict, payload: list | None = None, retries: int | None = None):
        with self._lock:
            return self._request_locked(header, payload or [], self.retries if retries is None else retries)

    def _request_locked(self, header: dict, payload: list, retries: int, while_waiting=None):
        """``while_waiting()`` runs once the request is first sent, while the engine works on it."""
        request_id = f"{self._prefix}-{next(self._ids)}"
        message = [protocol.pack({**header, "id": request_id}), *payload]
        _check_size(message)
        if self._socket is None and not listening(self.address):
            if self.autostart is not None:  # at once, not after a timeout's silence
                self.autostart(self.address)
            elif not self._listening_within(self.timeout):  # an engine may be starting: its socket comes soon
                raise EngineUnavailable(f"no SparseMat engine at {self.address}: {nobody_listens(self.address)}; "
                                        f"start one (sparsemat engine start --address {self.address})")
        answer = None
        for attempt in range(retries + 1):
            sender = self._connect()
            sender.send_multipart(message, copy=False)
            if attempt == 0 and while_waiting is not None:
                while_waiting()
            answer = self._wait(sender, request_id, attempt)
            if isinstance(answer, tuple):
                reply, frames = answer
                if not reply.get("ok"):
                    error = reply.get("error") or {}
                    raise EngineError(error.get("code", "internal"), error.get("message", "engine error"))
                return reply, frames
            self._drop_socket()
            if attempt < retries and self.autostart is not None:
                self.autostart(self.address)
        if answer == _LOST:
            raise EngineUnavailable(f"the SparseMat engine at {self.address} answers but did not receive the request "
                                    f"in {retries + 1} attempt(s) (restarted meanwhile?); its log may say why")
        if answer == _GONE:
            raise EngineUnavailable(f"the SparseMat engine at {self.address} stopped while it had the request "
                                    f"(its socket is gone); sparsemat engine status --address {self.address}")
        raise EngineUnavailable(f"no answer from the SparseMat engine at {self.address} after {retries + 1} "
                                f"attempt(s) of {self.timeout:g} s of silence; sparsemat engine status --address "
                                f"{self.address}")

    def _listening_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if listening(self.address):
                return True
        return False

    def _wait(self, sender: zmq.Socket, request_id: str, attempt: int):
        """(header, payload frames) of the reply; else _SILENT once the engine has been silent too
        long, _LOST once it answers a ping of this ``attempt`` without holding the request, or
        _GONE once its ipc socket file is gone (it stopped)."""
        last_heard = time.monotonic()
        pings = itertools.count(1)
        # The attempt is in the ping's id: an engine answers pings an earlier attempt queued on its
        # old connection after this one took the client's routing id over, and those answers
        # ("unknown", sent before this attempt's request arrived) come here.
        ping_prefix = f"{request_id}-try{attempt}-ping"
        ipc_path = self.address[len("ipc://"):] if self.address.startswith("ipc://") else None
        while time.monotonic() - last_heard < self.timeout:
            if sender.poll(int(min(self.heartbeat, self.timeout) * 1000), zmq.POLLIN):
                frames = sender.recv_multipart(copy=False)  # the alpha is used from the message buffer
                last_heard = time.monotonic()
                try:
                    reply = protocol.unpack(frames[0].bytes)
                except protocol.ProtocolError:
                    continue
                answer_to = reply.get("id")
                if answer_to == request_id:
                    return reply, [frame.buffer for frame in frames[1:]]
                if isinstance(answer_to, str) and answer_to.startswith(ping_prefix) and reply.get("request") == "unknown":
                    # Replies and ping answers share one ordered pipe: had the reply been sent
                    # before this answer, it would have arrived first.
                    return _LOST
                continue  # a ping's answer, or a late reply to a request given up on
            if ipc_path is not None and not os.path.exists(ipc_path):
                return _GONE
            # The engine answers status at once even while computing or loading the model. Not
            # blocking: with no engine connected, pings would fill the queue and block here.
            try:
                sender.send_multipart([protocol.pack({"op": "status", "id": f"{ping_prefix}{next(pings)}",
                                                      "request": request_id})], flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        return _SILENT

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            dealer = self._context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.ROUTING_ID, self._prefix.encode())
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
            dealer.setsockopt(zmq.SNDHWM, 16)
            # A zero-copy send costs pyzmq more than copying a payload this small (a prior: 130 KB
            # at 1080p, 0.5 MB at 4K); larger frames stay zero-copy.
            dealer.copy_threshold = 1 << 20
            dealer.connect(self.address)
            self._socket = dealer
        return self._socket

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
