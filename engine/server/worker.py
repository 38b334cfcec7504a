"""The engine's worker thread: it loads the model, owns it, the stream store and the shared-memory
mappings, and computes ``matte`` and ``reset`` in arrival order. Replies go back through a
queue and a wake-up on an inproc socket, so only the main thread ever touches the ROUTER."""
from __future__ import annotations

import logging
import queue
import time
import traceback

import numpy as np
import torch

from sparsemat.plugin import protocol
from sparsemat.plugin.protocol import ProtocolError

from ..allocator import give_back_freed_memory
from ..foreground import premultiplied_foreground
from ..streams import CachedReply, StreamStore
from ..validation import FrameError
from .blocks import SharedMemoryBlocks
from .requests import MatteRequest, Policy, load_guide, load_image, load_plate, raw_pixels

log = logging.getLogger("sparsemat.engine")
STOP = object()
TIDY = object()  # a job for an idle worker: evict idle streams, let go of clients' closed blocks
TRIM = object()  # a job for a worker idle a while: give the memory large frames took back to the system


def error_reply(request_id, code: str, message: str) -> list:
    return [protocol.pack({"id": request_id, "ok": False, "error": {"code": code, "message": message}})]


class Worker:
    """``state`` (loading | ready | failed), ``load_error``, ``device``, ``frames_served`` and
    ``busy`` may be read from the main thread; everything else is this thread's."""

    def __init__(self, load_matter, streams: StreamStore, jobs: queue.Queue, outbox: queue.Queue, wake, on_failure,
                 policy: Policy, departed):
        self._load_matter = load_matter
        self._policy = policy
        self._departed = departed  # departed(identity): that client has gone silent (see Engine.departed)
        self.streams = streams
        self._jobs = jobs
        self._outbox = outbox
        self._wake = wake  # connected PAIR socket, created by the main thread for this one
        self._on_failure = on_failure
        self._blocks = SharedMemoryBlocks()
        self.matter = None
        self.state = "loading"
        self.load_error = ""
        self.frames_served = 0
        self.busy = False

    def run(self) -> None:
        self._load()
        try:
            while True:
                job = self._jobs.get()
                if job is STOP:
                    return
                if job is TIDY:
                    self._tidy()
                    continue
                if job is TRIM:
                    give_back_freed_memory()
                    continue
                identity, request_id, op, request = job
                if self._departed(identity):  # nobody is there to read the answer
                    log.info("request %r dropped: its client stopped its heartbeats", request_id)
                    self._outbox.put((identity, request_id, None))
                    self._wake.send(b"")
                    continue
                self.busy = True
                try:
                    frames = self._answer(request_id, op, request)
                except ProtocolError as exc:
                    frames = error_reply(request_id, exc.code, str(exc))
                except Exception as exc:  # the engine must answer and stay up
                    log.error("request %r failed:\n%s", request_id, traceback.format_exc())
                    frames = error_reply(request_id, "internal", f"{type(exc).__name__}: {exc}".splitlines()[0])
                finally:
                    self.busy = False
                self._outbox.put((identity, request_id, frames))
                self._wake.send(b"")
        finally:
            self._blocks.close()
            self._wake.close()

    def _load(self) -> None:
        try:
            self.matter = self._load_matter()
            self.state = "ready"
            log.info("model loaded on %s", self.matter.device)
        except Exception as exc:
            self.load_error = f"the model failed to load: {exc}".splitlines()[0]
            self.state = "failed"
            log.error("%s", self.load_error)
            self._on_failure()

    def _tidy(self) -> None:
        try:
            self.streams.evict()
            self._blocks.let_go_of_closed()
        except Exception:  # housekeeping must never stop the worker
            log.error("housekeeping failed:\n%s", traceback.format_exc())

    def _answer(self, request_id, op: str, request) -> list:
        if self.matter is None:
            raise ProtocolError("internal", self.load_error)
        if op == "reset":
            dropped = self.streams.reset(request)
            return [protocol.pack({"id": request_id, "ok": True, "dropped": dropped})]
        matte, key = request
        stream = self.streams.find(matte.stream)
        cached = None if stream is None or stream.frame != matte.frame else stream.last_reply
        if cached is not None and cached.key == key:
            if cached.shm_alpha is not None:  # the client may have reused the slot since the lost reply
                self._write_alpha(*cached.shm_alpha, cached.alpha)
            return cached.frames
        return self._matte(request_id, matte, key, stream)

    def _matte(self, request_id, request: MatteRequest, key: tuple, stream) -> list:
        if self.matter.model is None and request.prior is None and request.trimap is None and request.clean_plate is None:
            raise ProtocolError("bad_request", "this engine has no checkpoint (guided refiner): send a 'prior', "
                                               "a 'trimap' or a 'clean_plate'")
        start = time.perf_counter()
        # The guides' and the image's pixels may be views of blocks, which stay mapped until
        # Matter has read them: a block is unmapped only as the least recently read of over
        # ``keep``, and these four are the most recent.
        prior, trimap = (None if source is None else torch.from_numpy(load_guide(source, self._blocks, self._policy))
                         for source in (request.prior, request.trimap))
        if request.foreground_colours is not None:  # the plate's own colours, as the client read them
            frame_rgb = load_image(request.image, request.colourspace, self._blocks, self._policy)
            colours = raw_pixels(request.foreground_colours, self._blocks).copy()
            if colours.shape[:2] != frame_rgb.shape[:2] or not np.isfinite(colours).all():
                raise ProtocolError("bad_pixels", f"'foreground_colours' must be finite and the image's size "
                                                  f"({frame_rgb.shape[1]}x{frame_rgb.shape[0]})")
        elif request.foreground:
            frame_rgb, colours = load_plate(request.image, request.colourspace, self._blocks, self._policy)
        else:
            frame_rgb, colours = load_image(request.image, request.colourspace, self._blocks, self._policy), None
        clean_plate = (None if request.clean_plate is None else
                       torch.from_numpy(load_image(request.clean_plate, request.colourspace, self._blocks, self._policy)))
        shm_alpha = None
        if request.alpha_shm_offset is not None:  # refused before the compute if the block is too small
            shm_alpha = (request.image.shm, request.alpha_shm_offset, request.alpha_dtype)
            self._alpha_slot(*shm_alpha, frame_rgb.shape[:2])
        read_ms = (time.perf_counter() - start) * 1000.0
        previous = self.streams.previous_state(stream, request.frame, request.temporal, request.keyframe_interval)
        try:
            alpha, state, stats = self.matter.matte(torch.from_numpy(frame_rgb), previous, prior=prior, trimap=trimap,
                                                    trimap_dilation=request.trimap_dilation, clean_plate=clean_plate,
                                                    max_pixels=request.max_pixels)
        except FrameError as exc:
            raise ProtocolError("bad_pixels", str(exc)) from exc
        # Kept even when this frame did not reuse: the next one may. Inside the frame's total:
        # replacing the previous state frees its frame and alpha, as an in-process loop does.
        stream = self.streams.record(request.stream, request.frame, state)
        self.frames_served += 1
        header = {"id": request_id, "ok": True, "stream": request.stream, "frame": request.frame,
                  "shape": list(alpha.shape), "dtype": request.alpha_dtype,
                  "stats": {"active_fraction": stats.active_fraction, "active_pixels": stats.active_pixels,
                            "spatial_pixels": stats.spatial_pixels, "temporal_pixels": stats.temporal_pixels,
                            "continued": stats.continued, "reused": stats.reused, "mode": stats.mode,
                            "note": stats.note, "warnings": self.streams.take_warnings(request.stream),
                            "ms": {"read": read_ms, **stats.ms}}}
        payload = []
        if shm_alpha is not None:
            self._write_alpha(*shm_alpha, alpha)  # from the model's tensor: a GPU's goes straight in
            header["alpha_in_shm"] = True
        else:
            payload.append(alpha.cpu().numpy().astype(protocol.DTYPES[request.alpha_dtype], copy=False))
        if colours is not None:  # unmixed where the alpha is, on the model's device
            foreground = premultiplied_foreground(torch.from_numpy(colours).to(alpha.device), alpha).cpu().numpy()
            payload.append(foreground)
            header["foreground"] = {"shape": list(foreground.shape), "dtype": "float32", "frame": len(payload)}
        header["stats"]["ms"]["total"] = (time.perf_counter() - start) * 1000.0
        reply = [protocol.pack(header), *payload]  # sent from the arrays' own buffers
        stream.last_reply = CachedReply(key, reply, shm_alpha, alpha)
        return reply

    def _alpha_slot(self, block: str, offset: int, dtype_name: str, shape) -> torch.Tensor:
        """A writable (H, W) tensor over the client's shared-memory ``block`` from ``offset``."""
        dtype = protocol.DTYPES[dtype_name]
        count = shape[0] * shape[1]
        return self._blocks.read(block, offset + count * np.dtype(dtype).itemsize, lambda buffer: torch.from_numpy(
            np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)))

    def _write_alpha(self, block: str, offset: int, dtype_name: str, alpha: torch.Tensor) -> None:
        self._alpha_slot(block, offset, dtype_name, tuple(alpha.shape)).copy_(alpha)
