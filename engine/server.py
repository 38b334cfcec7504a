"""The engine process: one warm model served over ZeroMQ (protocol in docs/PROTOCOL.md).

Threads: the main thread owns the ROUTER socket, validates requests and answers
``hello`` and ``status`` at once, even while a frame is computing; one worker
thread owns the model and the stream store and computes ``matte`` and ``reset``
in arrival order. The worker hands replies back through an inproc socket, so
only the main thread ever touches the ROUTER.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections import OrderedDict
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import zmq

from sparsemat.plugin import protocol
from sparsemat.plugin.protocol import ProtocolError

from .config import EngineConfig
from .imageio import ImageReadError, display_rgb, read_alpha, read_rgb
from .matting import MAX_PIXELS, MIN_PIXELS, FrameError
from .streams import StreamStore

log = logging.getLogger("sparsemat.engine")
ENGINE_VERSION = importlib.metadata.version("sparsemat")
_STOP = object()
_TIDY = object()  # a job for an idle worker: evict idle streams, let go of clients' closed blocks
_TIDY_EVERY_S = 30.0


def _require(header: dict, field: str, kind, default=None, required: bool = True):
    value = header.get(field, default)
    if value is None and not required:
        return None
    if value is None:
        raise ProtocolError("bad_request", f"'{field}' is required")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError("bad_request", f"'{field}' must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _error(request_id, code: str, message: str) -> list:
    return [protocol.pack({"id": request_id, "ok": False, "error": {"code": code, "message": message}})]


class Engine:
    """Binds at once and answers ``hello``/``status`` while the worker loads the model, so that
    clients' heartbeats see a live engine during a long load instead of timing out."""

    def __init__(self, config: EngineConfig, load_matter, model_name: str):
        self.config = config
        self._load_matter = load_matter
        self.matter = None
        self.state = "loading"  # loading | ready | failed
        self.load_error = ""
        self.model_name = model_name
        self.streams = StreamStore(config.memory_budget_bytes, config.stream_idle_s)
        self.started = time.monotonic()
        self.frames_served = 0
        self.busy = False
        self.draining = False
        # Requests queued for the worker and not yet answered, as id -> count (a retry may repeat an
        # id while the first is queued); main thread only.
        self._pending: dict = {}
        self._last_work = time.monotonic()  # when a matte or reset was last queued or answered (main thread only)
        self._last_tidy = time.monotonic()  # main thread only
        self._jobs: queue.Queue = queue.Queue()
        self._context = zmq.Context()
        self._outbox: queue.Queue = queue.Queue()
        self._blocks = SharedMemoryBlocks(release=self.streams.release)

    # ---- main thread -------------------------------------------------------------------------
    def serve(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        # Frames are large: a few queued per peer is plenty, and bounds the memory a flood can take.
        router.setsockopt(zmq.RCVHWM, 16)
        router.setsockopt(zmq.SNDHWM, 16)
        router.setsockopt(zmq.LINGER, 1000)
        router.bind(self.config.address)
        wake_recv = self._context.socket(zmq.PAIR)
        wake_recv.bind("inproc://sparsemat-wake")
        worker = threading.Thread(target=self._work, name="sparsemat-worker", daemon=True)
        worker.start()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake_recv, zmq.POLLIN)
        log.info("engine %s serving %s on %s (pid %d); loading the model", ENGINE_VERSION, self.model_name,
                 self.config.address, os.getpid())
        try:
            while True:
                events = dict(poller.poll(1000))
                if wake_recv in events:
                    wake_recv.recv()
                while not self._outbox.empty():
                    identity, request_id, frames = self._outbox.get()
                    router.send_multipart([identity, *frames], copy=False)
                    still_queued = self._pending.pop(request_id) - 1
                    if still_queued:
                        self._pending[request_id] = still_queued
                    self._last_work = time.monotonic()
                if router in events:
                    frames = router.recv_multipart(copy=False)
                    reply = self._receive(frames[0].bytes, frames[1:])
                    if reply is not None:
                        router.send_multipart([frames[0].bytes, *reply], copy=False)
                self._stop_when_idle()
                self._tidy_when_idle()
                if self.draining and not self._pending:
                    break
        finally:
            self._jobs.put(_STOP)
            worker.join(timeout=30)
            router.close()
            wake_recv.close()
            self._context.term()
            log.info("engine stopped after %d frame(s)", self.frames_served)

    def stop(self) -> None:
        """Finish what is queued, take nothing new, then return from serve() (signal-safe)."""
        self.draining = True

    def _stop_when_idle(self) -> None:
        """An engine whose owner died without stopping it (a killed farm session) must not hold
        the GPU for ever: with ``exit_when_idle_s``, no matte or reset for that long stops it.
        ``status`` and ``hello`` are not work: monitoring does not keep an engine alive."""
        limit = self.config.exit_when_idle_s
        if limit > 0 and not self.draining and not self._pending and time.monotonic() - self._last_work > limit:
            log.info("no work for %.0f s: stopping (exit when idle)", limit)
            self.stop()

    def _tidy_when_idle(self) -> None:
        """What idles out goes even when no frame comes to trigger it (a frame evicts as it is
        recorded). Asked of the worker, which owns the streams and blocks, as a job, and only after a
        second without work, so it never runs between a client's requests; a worker waiting on its
        queue with a timeout instead made every request 0.1 ms slower here."""
        now = time.monotonic()
        if (not self._pending and now - self._last_work > 1.0
                and now - self._last_tidy > min(_TIDY_EVERY_S, self.config.stream_idle_s)):
            self._jobs.put(_TIDY)
            self._last_tidy = now

    def _receive(self, identity: bytes, frames: list) -> list | None:
        """Reply frames for what can be answered now; None when the request went to the worker."""
        request_id = None
        try:
            if not frames:
                raise ProtocolError("bad_message", "empty message: expected a MessagePack header frame")
            header = protocol.unpack(frames[0].bytes)
            request_id = header.get("id")
            if not isinstance(request_id, (int, str, type(None))):
                request_id = None
                raise ProtocolError("bad_request", "'id' must be an integer or a string")
            if header.get("v") != protocol.VERSION:
                raise ProtocolError("bad_version", f"protocol version {header.get('v')!r} is not supported (this engine speaks {protocol.VERSION})")
            op = header.get("op")
            if op not in protocol.OPERATIONS:
                raise ProtocolError("unknown_op", f"unknown op {op!r}; expected one of {', '.join(protocol.OPERATIONS)}")
            if op == "hello":
                return [protocol.pack({"id": request_id, "ok": True, **self._hello()})]
            if op == "status":
                return [protocol.pack({"id": request_id, "ok": True, **self._status(header)})]
            if op == "shutdown":  # also while draining: asking twice is not an error
                self.stop()
                return [protocol.pack({"id": request_id, "ok": True})]
            if self.draining:
                raise ProtocolError("busy", "the engine is shutting down and takes no new work")
            if op == "reset":
                _require(header, "stream", str)
                request = header
            else:
                request = self._parse_matte(header, frames)
            self._jobs.put((identity, request_id, op, request))
            self._pending[request_id] = self._pending.get(request_id, 0) + 1
            self._last_work = time.monotonic()
            return None
        except ProtocolError as exc:
            return _error(request_id, exc.code, str(exc))
        except Exception as exc:  # a malformed request must never take the engine down
            log.error("request %r could not be read:\n%s", request_id, traceback.format_exc())
            return _error(request_id, "bad_request", f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _device(self) -> str:
        return str(self.matter.device) if self.matter is not None else self.config.device

    def _hello(self) -> dict:
        max_pixels = self.matter.max_pixels if self.matter is not None else MAX_PIXELS
        return {"protocol": protocol.VERSION, "engine": ENGINE_VERSION, "model": self.model_name,
                "device": self._device(), "pid": os.getpid(), "state": self.state,
                "limits": {"max_header_bytes": protocol.MAX_HEADER_BYTES, "max_message_bytes": protocol.MAX_MESSAGE_BYTES,
                           "max_pixels": max_pixels, "dtypes": list(protocol.DTYPES),
                           "transports": list(protocol.TRANSPORTS)}}

    def _status(self, header: dict) -> dict:
        status = {"address": self.config.address, "pid": os.getpid(), "uptime_s": time.monotonic() - self.started,
                  "state": self.state, "error": self.load_error,
                  "device": self._device(), "model": self.model_name, "streams": len(self.streams),
                  "memory_bytes": self.streams.memory_bytes, "memory_budget_bytes": self.config.memory_budget_bytes,
                  "frames_served": self.frames_served, "queue": self._jobs.qsize(), "busy": self.busy}
        if "request" in header:  # a client's heartbeat asks whether its request is still here
            status["request"] = "pending" if header["request"] in self._pending else "unknown"
        return status

    def _parse_matte(self, header: dict, frames: list) -> dict:
        request = {
            "stream": _require(header, "stream", str),
            "frame": _require(header, "frame", int),
            "colourspace": _require(header, "colourspace", str, required=False),
            "temporal": _require(header, "temporal", bool, default=True),
            "keyframe_interval": _require(header, "keyframe_interval", int, default=0),
            "alpha_dtype": _require(header, "alpha_dtype", str, default="float32"),
            "max_pixels": _require(header, "max_pixels", int, required=False),
        }
        if request["alpha_dtype"] not in protocol.ALPHA_DTYPES:
            raise ProtocolError("bad_request", f"'alpha_dtype' must be one of {', '.join(protocol.ALPHA_DTYPES)}")
        if request["max_pixels"] is not None and request["max_pixels"] < MIN_PIXELS:
            raise ProtocolError("bad_request", f"'max_pixels' must be at least {MIN_PIXELS}")
        if request["keyframe_interval"] < 0:
            raise ProtocolError("bad_request", "'keyframe_interval' must be 0 or more")
        request["image"] = self._pixel_source(_require(header, "image", dict), frames, "image", (1, 3, 4))
        request["alpha_shm_offset"] = _require(header, "alpha_shm_offset", int, required=False)
        request["slots_read_only"] = _require(header, "slots_read_only", bool, default=False)
        if request["alpha_shm_offset"] is not None and (
                request["image"]["transport"] != "shm" or request["alpha_shm_offset"] < request["image"]["nbytes"]):
            raise ProtocolError("bad_request", "'alpha_shm_offset' needs the image in shared memory, "
                                               "and must not overlap its pixels")
        prior = _require(header, "prior", dict, required=False)
        request["prior"] = None if prior is None else self._pixel_source(prior, frames, "prior", (1,))
        return request

    @staticmethod
    def _pixel_source(block: dict, frames: list, name: str, channels: tuple) -> dict:
        """Validate a pixel block; inline bytes are checked against the shape here, at once."""
        transport = block.get("transport", "inline")
        if transport not in protocol.TRANSPORTS:
            raise ProtocolError("bad_request", f"{name}: 'transport' must be one of {', '.join(protocol.TRANSPORTS)}")
        if transport == "file":
            return {"transport": "file", "path": _require(block, "path", str)}
        shape, dtype = block.get("shape"), block.get("dtype")
        if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape)
                or shape[2] not in channels):
            raise ProtocolError("bad_request", f"{name}: 'shape' must be [H, W, C] with C in {channels}, got {shape!r}")
        if dtype not in protocol.DTYPES:
            raise ProtocolError("bad_request", f"{name}: 'dtype' must be one of {', '.join(protocol.DTYPES)}, got {dtype!r}")
        expected = protocol.pixel_nbytes(shape, dtype)
        source = {"transport": transport, "shape": shape, "dtype": dtype, "nbytes": expected}
        if transport == "shm":
            source["shm"] = _require(block, "shm", str)
            return source
        index = block.get("frame", 1)
        if not isinstance(index, int) or not 1 <= index < len(frames):
            raise ProtocolError("bad_request", f"{name}: payload frame {index!r} is missing")
        buffer = frames[index].buffer
        if buffer.nbytes != expected:
            raise ProtocolError("size_mismatch", f"{name}: {buffer.nbytes} bytes sent, but shape {shape} of {dtype} "
                                                 f"needs {expected}")
        source["buffer"] = buffer
        return source

    # ---- worker thread -----------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.matter = self._load_matter()
            self.state = "ready"
            log.info("model loaded on %s", self.matter.device)
        except Exception as exc:
            self.load_error = f"the model failed to load: {exc}".splitlines()[0]
            self.state = "failed"
            log.error("%s", self.load_error)
            self.stop()

    def _work(self) -> None:
        wake = self._context.socket(zmq.PAIR)
        wake.connect("inproc://sparsemat-wake")
        self._load()
        try:
            while True:
                job = self._jobs.get()
                if job is _TIDY:
                    try:
                        self.streams.evict()
                        self._blocks.let_go_of_closed()
                    except Exception:  # housekeeping must never stop the worker
                        log.error("housekeeping failed:\n%s", traceback.format_exc())
                    continue
                if job is _STOP:
                    return
                identity, request_id, op, request = job
                self.busy = True
                try:
                    frames = self._run(request_id, op, request)
                except ProtocolError as exc:
                    frames = _error(request_id, exc.code, str(exc))
                except Exception as exc:  # the engine must answer and stay up
                    log.error("request %r failed:\n%s", request_id, traceback.format_exc())
                    frames = _error(request_id, "internal", f"{type(exc).__name__}: {exc}".splitlines()[0])
                finally:
                    self.busy = False
                self._outbox.put((identity, request_id, frames))
                wake.send(b"")
        finally:
            self._blocks.close()
            wake.close()

    def _run(self, request_id, op: str, request: dict) -> list:
        if self.matter is None:
            raise ProtocolError("internal", self.load_error)
        if op == "reset":
            dropped = self.streams.reset(request["stream"])
            return [protocol.pack({"id": request_id, "ok": True, "dropped": dropped})]
        stream = self.streams.find(request["stream"])
        if (stream is not None and stream.last_reply is not None and request_id is not None
                and stream.last_reply[0] == request_id and stream.frame == request["frame"]):
            _, frames, alpha_in_shm = stream.last_reply  # a client retry: the same answer, not a second compute
            if alpha_in_shm is not None:
                block, offset, dtype, alpha = alpha_in_shm
                self._alpha_slot(block, offset, dtype, alpha.shape, request["stream"]).copy_(alpha)
            return frames
        return self._matte(request_id, request, stream)

    def _matte(self, request_id, request: dict, stream) -> list:
        import torch

        if self.matter.model is None and request["prior"] is None:
            raise ProtocolError("bad_request", "this engine has no checkpoint (guided refiner): send a 'prior'")
        start = time.perf_counter()
        # A block shrunk since it was mapped may hold a stream's alpha past its new end: reading
        # that would be a SIGBUS, so the stream loses its state before anything reads it.
        self._blocks.let_go_of_shrunk()
        alpha_dtype = protocol.DTYPES[request["alpha_dtype"]]
        # The prior's and the image's pixels may be views of blocks, which must stay mapped until
        # Matter has read them: a block is closed only as the least recently read of over
        # ``keep``, and these two are the most recent.
        prior = None if request["prior"] is None else _load_prior(request["prior"], self._blocks)
        frame_rgb = _load_image(request["image"], request["colourspace"], self._blocks)
        # The alpha's slot is mapped now, not after the compute, when this thread's caches are
        # cold; and a block too small for the alpha is refused before the frame is computed.
        alpha_slot = None if request["alpha_shm_offset"] is None else self._alpha_slot(
            request["image"]["shm"], request["alpha_shm_offset"], alpha_dtype, frame_rgb.shape[:2], request["stream"])
        # A client that never writes its slots lets the stream keep its alpha in one: the alpha is
        # composed there, and the engine makes no copy of its own (a full frame's pass saved).
        # A GPU's alpha, or one sent as float16, is written into the slot after the compute instead.
        alpha_out = alpha_slot if (request["slots_read_only"] and alpha_dtype == np.float32
                                   and self.matter.device.type == "cpu") else None
        read_ms = (time.perf_counter() - start) * 1000.0
        previous = None if stream is None else self.streams.previous_state(
            stream, request["frame"], request["temporal"], request["keyframe_interval"])
        matter = self.matter.with_budget(request["max_pixels"])
        try:
            alpha, state, stats = matter.matte(torch.from_numpy(frame_rgb), previous,
                                               prior=None if prior is None else torch.from_numpy(prior), out=alpha_out)
        except FrameError as exc:
            raise ProtocolError("bad_pixels", str(exc)) from exc
        # Kept even when this frame did not reuse: the next one may. Inside the frame's total:
        # replacing the previous state frees its frame and alpha, as an in-process loop does.
        stream = self.streams.record(request["stream"], request["frame"], state)
        if alpha_slot is None:
            alpha = alpha.cpu().numpy().astype(alpha_dtype, copy=False)
        self.frames_served += 1
        header = {"id": request_id, "ok": True, "stream": request["stream"], "frame": request["frame"],
                  "shape": list(alpha.shape), "dtype": request["alpha_dtype"],
                  "stats": {"active_fraction": stats.active_fraction, "active_pixels": stats.active_pixels,
                            "spatial_pixels": stats.spatial_pixels, "temporal_pixels": stats.temporal_pixels,
                            "reused": stats.reused, "mode": stats.mode, "note": stats.note,
                            "ms": {"read": read_ms, **stats.ms, "total": (time.perf_counter() - start) * 1000.0}}}
        alpha_in_shm = None  # (block, offset, dtype, alpha): written again for a retry
        if alpha_slot is not None:
            if alpha_out is None:  # from the model's own alpha, whatever its device: a GPU's goes straight in
                alpha_slot.copy_(alpha)
            alpha_in_shm = (request["image"]["shm"], request["alpha_shm_offset"], alpha_dtype, alpha)
            header["alpha_in_shm"] = True
            reply = [protocol.pack(header)]
        else:
            reply = [protocol.pack(header), alpha]  # sent from the array's own buffer
        stream.last_reply = (request_id, reply, alpha_in_shm)
        return reply

    def _alpha_slot(self, block: str, offset: int, dtype, shape, stream: str):
        """A writable (H, W) tensor over the client's shared-memory ``block`` from ``offset``, for
        ``stream``'s alpha: any other stream's alpha kept there is moved out first."""
        import torch

        count = shape[0] * shape[1]
        slot = self._blocks.read(block, offset + count * np.dtype(dtype).itemsize, lambda buffer: torch.from_numpy(
            np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)))
        self.streams.before_slot_write(slot.data_ptr(), slot.data_ptr() + slot.nbytes, stream)
        return slot


def _raw_pixels(source: dict, blocks: SharedMemoryBlocks) -> np.ndarray:
    """The block's pixels as float32 (H, W, 1 or 3). Float32 pixels are a view of the message or
    shared-memory buffer, not a copy: the engine only reads them, and only while it answers
    this request. Other types take one converting pass, integers scaled to [0, 1]."""
    height, width, channels = source["shape"]
    dtype = protocol.DTYPES[source["dtype"]]

    def convert(buffer) -> np.ndarray:
        raw = np.frombuffer(buffer, dtype=dtype, count=height * width * channels).reshape(height, width, channels)
        raw = raw[..., : min(channels, 3)]  # an alpha channel is ignored
        if dtype == np.float32:
            return raw
        pixels = np.empty(raw.shape, np.float32)
        np.copyto(pixels, raw, casting="unsafe")
        if np.issubdtype(dtype, np.integer):
            pixels *= np.float32(1.0 / np.iinfo(dtype).max)
        return pixels

    if source["transport"] == "inline":
        return convert(source["buffer"])
    return blocks.read(source["shm"], source["nbytes"], convert, holds_pixels=True)


class SharedMemoryBlocks:
    """Clients' shared-memory blocks, kept attached between requests (worker thread only).

    Attaching maps the block anew and every page then faults on first touch, which cost more
    than the copy itself; clients reuse their blocks (one for frames, one for priors), so the
    mappings are kept. A block is known by its name and inode, so a name reused for a new block
    is attached afresh, and so is a block whose size changed. A view from ``read`` is valid
    until its block is closed: by ``close``, as the least recently read of over ``keep``, or
    when it is read again at another size. ``release(start, end, copy)`` is told of memory
    that stops holding what the engine may have kept there (a stream's alpha in a slot): before
    a block is unmapped (``copy``: unless it shrank, when reading all of it would be a SIGBUS,
    or the engine is stopping), and for the bytes a request's pixels are read from (a client
    that laid its block out anew may have written them over an old slot)."""

    def __init__(self, keep: int = 16, release=lambda start, end, copy: None):
        self.keep = keep
        self._release = release
        self._blocks: OrderedDict = OrderedDict()  # (name, inode) -> (SharedMemory, its address here)

    def read(self, name: str, nbytes: int, read, holds_pixels: bool = False):
        """``read(buffer)`` on the block ``name``, which must hold at least ``nbytes`` (the first of
        which are a request's pixels when ``holds_pixels``)."""
        if not protocol.SHARED_MEMORY:
            raise ProtocolError("bad_request", "the shared-memory transport needs an engine on Linux; send pixels inline")
        try:
            info = os.stat(_block_path(name))
            key = (name.lstrip("/"), info.st_ino)  # "/x" and "x" name one block
            if key in self._blocks and self._blocks[key][0].size != info.st_size:
                self._unmap(key)  # resized since it was mapped: reading past a shrunk block's end is a SIGBUS
            fresh = key not in self._blocks
            if fresh:
                self.let_go_of_closed()
                block = shared_memory.SharedMemory(name=name, create=False)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise ProtocolError("bad_pixels", f"shared memory block {name!r} cannot be opened: {exc}") from exc
        if fresh:
            # Attaching registers the block with this process's resource tracker, which would
            # unlink the client's block when the engine exits; the client owns it.
            resource_tracker.unregister(block._name, "shared_memory")  # noqa: SLF001
            self._blocks[key] = (block, np.frombuffer(block.buf, dtype=np.uint8, count=1).ctypes.data)
        self._blocks.move_to_end(key)
        while len(self._blocks) > self.keep:
            self._unmap(next(iter(self._blocks)))
        block, start = self._blocks[key]
        if block.size < nbytes:
            raise ProtocolError("size_mismatch", f"shared memory block {name!r} holds {block.size} bytes, "
                                                 f"the request needs {nbytes}")
        if holds_pixels:
            self._release(start, start + nbytes, copy=False)
        return read(block.buf)

    def let_go_of_closed(self) -> None:
        """Unmap the blocks whose clients have closed (unlinked) or replaced them: a mapping keeps a
        closed block's memory in use, up to a frame per block (800 MB for an 8K float frame)."""
        for key in list(self._blocks):
            name, inode = key
            try:
                current = os.stat(_block_path(name)).st_ino
            except OSError:
                current = None
            if current != inode:
                try:
                    self._unmap(key)
                except BufferError:  # a view of it is still in use: next time
                    pass

    def let_go_of_shrunk(self) -> None:
        """Unmap the blocks whose clients have shrunk them since they were mapped."""
        for key in [key for key, (block, _) in self._blocks.items() if _shrunk(block)]:
            self._unmap(key)

    def _unmap(self, key, copy: bool = True) -> None:
        block, start = self._blocks[key]
        self._release(start, start + block.size, copy=copy and not _shrunk(block))
        block.close()
        del self._blocks[key]

    def close(self) -> None:
        """The engine is stopping: nothing kept in the blocks is copied out."""
        while self._blocks:
            self._unmap(next(iter(self._blocks)), copy=False)


def _shrunk(block: shared_memory.SharedMemory) -> bool:
    return os.fstat(block._fd).st_size < block.size  # noqa: SLF001


def _block_path(name: str) -> str:
    return os.path.join("/dev/shm", name.lstrip("/"))


def _load_image(source: dict, colourspace: str | None, blocks: SharedMemoryBlocks) -> np.ndarray:
    """(H, W, 3) float32 display-encoded RGB. sRGB pixels are passed on as they are (a view, for
    float32): Matter clips them and rejects NaN/infinity as it normalizes, in passes it makes anyway."""
    try:
        if source["transport"] == "file":
            return read_rgb(source["path"], colourspace)
        pixels = _raw_pixels(source, blocks)
        colourspace = colourspace or "srgb"
        if colourspace.lower() == "srgb" and pixels.shape[2] == 3:
            return pixels
        # display_rgb works in place: never in the client's buffer.
        return display_rgb(pixels if pixels.flags.owndata else pixels.copy(), colourspace)
    except ImageReadError as exc:
        raise ProtocolError("bad_pixels", str(exc)) from exc
    except ProtocolError:  # a ValueError too, with its own code
        raise
    except ValueError as exc:  # an unknown colourspace
        raise ProtocolError("bad_request", str(exc)) from exc


def _load_prior(source: dict, blocks: SharedMemoryBlocks) -> np.ndarray:
    """Matter checks the prior's values (NaN or infinity); a file's are checked as it is read.
    Float32 pixels are a view, as the image's are: Matter reads them once, into a clipped copy."""
    if source["transport"] != "file":
        return _raw_pixels(source, blocks)[..., 0]
    try:
        return read_alpha(source["path"])
    except ImageReadError as exc:
        raise ProtocolError("bad_pixels", str(exc)) from exc


def run_engine(config: EngineConfig) -> int:
    """Serve until shutdown or SIGTERM/SIGINT (which finish queued work first); 1 if the model failed to load."""
    from .cli import load_matter

    def load():
        return load_matter(config.checkpoint, config.device, half=config.half)

    name = f"SparseMat ({os.path.basename(config.checkpoint)})" if config.checkpoint else "guided refiner (no checkpoint)"
    engine = Engine(config, load, name)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: engine.stop())
    engine.serve()
    return 1 if engine.state == "failed" else 0
