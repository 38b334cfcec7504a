"""The engine's main thread: the ROUTER socket, request checks, and the answers that never wait.

It binds at once and answers ``hello`` and ``status`` while the worker loads the model and while
it computes, so that clients' heartbeats see a live engine during a long load or frame instead
of timing out. ``matte`` and ``reset`` are checked here and queued for the worker.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import queue
import threading
import time
import traceback

import zmq

from sparsemat.plugin import protocol
from sparsemat.plugin.protocol import ProtocolError

from ..config import EngineConfig
from ..streams import StreamStore
from ..validation import MAX_FRAME_PIXELS, MAX_FRAME_SIDE, MAX_PIXELS
from .requests import Policy, parse_matte, require
from .worker import STOP, TIDY, TRIM, Worker, error_reply

log = logging.getLogger("sparsemat.engine")
ENGINE_VERSION = importlib.metadata.version("sparsemat")
_TIDY_EVERY_S = 30.0
_FINDABLE_EVERY_S = 10.0  # how often the engine checks that clients can still find it
MAX_QUEUED_PER_CLIENT = 8  # matte and reset requests one client may have waiting; more are refused
CLIENT_SILENCE_S = 5.0  # a client whose heartbeats stop for this long has gone: its queue is dropped
# After this long without work the engine gives freed memory back to the system: frames that come
# steadily (a farm task, a scrub) keep it, and a pause frees what a large frame took.
TRIM_AFTER_IDLE_S = 5.0


def retry_key(identity: bytes, header_bytes: bytes) -> tuple:
    """What makes a request a retry of an earlier one: the same client (its routing id, which the
    Python client keeps across its reconnects) and the same header, byte for byte (its id
    included): a retry sends the same message again."""
    return identity, header_bytes


class Engine:
    def __init__(self, config: EngineConfig, load_matter, model_name: str, findable=lambda: True):
        self.config = config
        self._findable = findable
        self._last_found = time.monotonic()
        self.model_name = model_name
        self.streams = StreamStore(config.memory_budget_bytes, config.stream_idle_s)
        self.started = time.monotonic()
        self.draining = False
        # Requests queued for the worker and not yet answered, as id -> count (a retry may repeat an
        # id while the first is queued); main thread only.
        self._pending: dict = {}
        self._last_work = time.monotonic()  # when a matte or reset was last queued or answered (main thread only)
        self._last_tidy = time.monotonic()  # main thread only
        self._trimmed = True  # the memory was given back since the last work (main thread only)
        self._jobs: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._context = zmq.Context()
        self._load_matter = load_matter
        self.worker: Worker | None = None
        self.policy = Policy(shared_memory=config.address.startswith("ipc://"), file_roots=config.allow_files_under)
        self._queued: dict[bytes, int] = {}  # requests waiting for the worker, by client (main thread only)
        # By client with requests queued: (when it last sent a heartbeat, the interval before it).
        self._heartbeats: dict[bytes, tuple[float, float]] = {}

    def serve(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        # Frames are large: a few queued per peer is plenty, and bounds the memory a flood can take.
        router.setsockopt(zmq.RCVHWM, 16)
        router.setsockopt(zmq.SNDHWM, 16)
        router.setsockopt(zmq.LINGER, 1000)
        # A client that reconnects under its routing id takes it over from its dead connection.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.bind(self.config.address)
        wake_recv = self._context.socket(zmq.PAIR)
        wake_recv.bind("inproc://sparsemat-wake")
        wake_send = self._context.socket(zmq.PAIR)
        wake_send.connect("inproc://sparsemat-wake")
        self.worker = Worker(self._load_matter, self.streams, self._jobs, self._outbox, wake_send, self.stop,
                             self.policy, self.departed)
        log.info("engine %s serving %s on %s (pid %d); loading the model", ENGINE_VERSION, self.model_name,
                 self.config.address, os.getpid())
        thread = threading.Thread(target=self.worker.run, name="sparsemat-worker", daemon=True)
        thread.start()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake_recv, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(1000))
                if wake_recv in events:
                    wake_recv.recv()
                self._send_answers(router)
                if router in events:
                    frames = router.recv_multipart(copy=False)
                    reply = self._receive(frames[0].bytes, frames[1:])
                    if reply is not None:
                        router.send_multipart([frames[0].bytes, *reply], copy=False)
                self._stop_when_idle()
                self._stop_when_lost()
                self._tidy_when_idle()
                self._trim_when_idle()
                if self.draining and not self._pending:
                    break
        finally:
            self._jobs.put(STOP)
            thread.join(timeout=30)
            router.close()
            wake_recv.close()
            self._context.term()
            log.info("engine stopped after %d frame(s)", self.worker.frames_served)

    def stop(self) -> None:
        """Finish what is queued, take nothing new, then return from serve() (signal-safe)."""
        self.draining = True

    def _send_answers(self, router) -> None:
        while not self._outbox.empty():
            identity, request_id, frames = self._outbox.get()
            if frames is not None:  # None: the client had gone, nothing was computed
                router.send_multipart([identity, *frames], copy=False)
            still_queued = self._pending.pop(request_id) - 1
            if still_queued:
                self._pending[request_id] = still_queued
            left = self._queued.pop(identity) - 1
            if left:
                self._queued[identity] = left
            else:
                self._heartbeats.pop(identity, None)
            self._last_work = time.monotonic()

    def departed(self, identity: bytes) -> bool:
        """Whether a client has gone: it sent heartbeats while its requests waited (the Python
        client pings ``status`` every second), and then fell silent for longer than
        ``CLIENT_SILENCE_S`` or three of its own intervals. A client that never pings is never
        taken for gone. Called by the worker; the main thread only replaces entries."""
        heard = self._heartbeats.get(identity)
        if heard is None:
            return False
        last, interval = heard
        return time.monotonic() - last > max(CLIENT_SILENCE_S, 3 * interval)

    def _heard(self, identity: bytes) -> None:
        now = time.monotonic()
        last = self._heartbeats.get(identity, (now, 0.0))[0]
        self._heartbeats[identity] = (now, now - last)

    def _stop_when_idle(self) -> None:
        """An engine whose owner died without stopping it (a killed farm session) must not hold
        the GPU for ever: with ``exit_when_idle_s``, no matte or reset for that long stops it.
        ``status`` and ``hello`` are not work: monitoring does not keep an engine alive."""
        limit = self.config.exit_when_idle_s
        if limit > 0 and not self.draining and not self._pending and time.monotonic() - self._last_work > limit:
            log.info("no work for %.0f s: stopping (exit when idle)", limit)
            self.stop()

    def _stop_when_lost(self) -> None:
        """An engine whose socket or lock file is gone (its runtime folder deleted at logout, a
        temp cleaner) can be reached by no client and stopped by no command: it goes."""
        now = time.monotonic()
        if now - self._last_found < _FINDABLE_EVERY_S or self.draining:
            return
        self._last_found = now
        if not self._findable():
            log.warning("the engine's socket or lock file was removed (its folder deleted?): no client can reach "
                        "it, so it stops")
            self.stop()

    def _tidy_when_idle(self) -> None:
        """What idles out goes even when no frame comes to trigger it (a frame evicts as it is
        recorded). Asked of the worker, which owns the streams and blocks, as a job, and only after a
        second without work, so it never runs between a client's requests; a worker waiting on its
        queue with a timeout instead made every request 0.1 ms slower here."""
        now = time.monotonic()
        if (not self._pending and now - self._last_work > 1.0
                and now - self._last_tidy > min(_TIDY_EVERY_S, self.config.stream_idle_s)):
            self._jobs.put(TIDY)
            self._last_tidy = now

    def _trim_when_idle(self) -> None:
        if not self._trimmed and not self._pending and time.monotonic() - self._last_work > TRIM_AFTER_IDLE_S:
            self._jobs.put(TRIM)
            self._trimmed = True

    def _receive(self, identity: bytes, frames: list) -> list | None:
        """Reply frames for what can be answered now; None when the request went to the worker."""
        request_id = None
        try:
            if not frames:
                raise ProtocolError("bad_message", "empty message: expected a MessagePack header frame")
            header = protocol.unpack(frames[0].bytes)
            request_id = header.get("id")
            if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
                request_id = None
                raise ProtocolError("bad_request", "'id' is required: an integer or a string")
            version = header.get("v")
            if type(version) is not int or version != protocol.VERSION:
                raise ProtocolError("bad_version", f"protocol version {version!r} is not supported (this engine "
                                                   f"speaks {protocol.VERSION}, an integer)")
            if sum(part.buffer.nbytes for part in frames) > protocol.MAX_MESSAGE_BYTES:
                raise ProtocolError("too_large", f"the message is over the {protocol.MAX_MESSAGE_BYTES}-byte limit, "
                                                 f"all its frames together")
            op = header.get("op")
            if op not in protocol.OPERATIONS:
                raise ProtocolError("unknown_op", f"unknown op {op!r}; expected one of {', '.join(protocol.OPERATIONS)}")
            if op == "hello":
                return [protocol.pack({"id": request_id, "ok": True, **self._hello()})]
            if op == "status":
                if "request" in header and identity in self._queued:
                    self._heard(identity)
                return [protocol.pack({"id": request_id, "ok": True, **self._status(header)})]
            if op == "shutdown":  # also while draining: asking twice is not an error
                self.stop()
                return [protocol.pack({"id": request_id, "ok": True})]
            if self.draining:
                raise ProtocolError("busy", "the engine is shutting down and takes no new work")
            if self._queued.get(identity, 0) >= MAX_QUEUED_PER_CLIENT:
                raise ProtocolError("busy", f"this client already has {MAX_QUEUED_PER_CLIENT} requests waiting: wait "
                                            f"for their replies before sending more")
            if op == "reset":
                request = require(header, "stream", str)
            else:
                request = (parse_matte(header, frames, self.policy), retry_key(identity, frames[0].bytes))
            self._jobs.put((identity, request_id, op, request))
            self._pending[request_id] = self._pending.get(request_id, 0) + 1
            self._queued[identity] = self._queued.get(identity, 0) + 1
            self._last_work = time.monotonic()
            self._trimmed = False
            return None
        except ProtocolError as exc:
            return error_reply(request_id, exc.code, str(exc))
        except Exception as exc:  # a malformed request must never take the engine down
            log.error("request %r could not be read:\n%s", request_id, traceback.format_exc())
            return error_reply(request_id, "bad_request", f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _device(self) -> str:
        matter = self.worker.matter
        return str(matter.device) if matter is not None else self.config.device

    def _hello(self) -> dict:
        matter = self.worker.matter
        return {"protocol": protocol.VERSION, "protocol_minor": protocol.MINOR, "engine": ENGINE_VERSION,
                "model": self.model_name, "device": self._device(), "pid": os.getpid(), "state": self.worker.state,
                "needs_prior": self.config.checkpoint is None,
                "limits": {"max_header_bytes": protocol.MAX_HEADER_BYTES, "max_message_bytes": protocol.MAX_MESSAGE_BYTES,
                           "max_pixels": MAX_PIXELS if matter is None else matter.max_pixels,
                           "max_frame_pixels": MAX_FRAME_PIXELS, "max_frame_side": MAX_FRAME_SIDE,
                           "max_queued_per_client": MAX_QUEUED_PER_CLIENT, "dtypes": list(protocol.DTYPES),
                           "transports": [t for t in protocol.TRANSPORTS if t != "shm" or self.policy.shared_memory]}}

    def _status(self, header: dict) -> dict:
        worker = self.worker
        status = {"address": self.config.address, "pid": os.getpid(), "uptime_s": time.monotonic() - self.started,
                  "state": worker.state, "error": worker.load_error,
                  "device": self._device(), "model": self.model_name, "checkpoint": self.config.checkpoint,
                  "streams": len(self.streams),
                  "memory_bytes": self.streams.memory_bytes, "memory_budget_bytes": self.config.memory_budget_bytes,
                  "frames_served": worker.frames_served, "queue": self._jobs.qsize(), "busy": worker.busy}
        if "request" in header:  # a client's heartbeat asks whether its request is still here
            asked = header["request"]
            if not isinstance(asked, (int, str)) or isinstance(asked, bool):
                raise ProtocolError("bad_request", "'request' must be the id of a request: an integer or a string")
            status["request"] = "pending" if asked in self._pending else "unknown"
        return status
