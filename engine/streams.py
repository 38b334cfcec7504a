"""Per-stream temporal state held by the engine, with least-recently-used eviction.

A stream is the host's name for one sequence (script, node, view). Its entry holds
the previous frame's :class:`MatteState` on the device and the last reply, so that
a client retry of the same request gets the same answer without a second compute.
A state's alpha may lie in a client's shared-memory slot (see ``before_slot_write`` and
``release``).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from .matting import MatteState

log = logging.getLogger("sparsemat.engine")


@dataclass
class Stream:
    state: MatteState | None = None
    frame: int | None = None
    last_used: float = 0.0
    # (request id, reply frames, (block, offset, dtype, alpha) when the alpha went to shared memory, else None)
    last_reply: tuple | None = None

    @property
    def nbytes(self) -> int:
        if self.state is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.state.frame, self.state.alpha))


def _overlaps(tensor: torch.Tensor, start: int, end: int) -> bool:
    first = tensor.data_ptr()
    return first < end and start < first + tensor.numel() * tensor.element_size()


def is_keyframe(frame: int, keyframe_interval: int) -> bool:
    return keyframe_interval > 0 and frame % keyframe_interval == 0


class StreamStore:
    """Streams by id, most recently used last. Only the engine's worker changes it; ``len`` and
    ``memory_bytes`` (a running total, not a walk over the streams) may be read from any thread."""

    def __init__(self, budget_bytes: int, idle_timeout_s: float, clock=time.monotonic):
        self.budget_bytes = budget_bytes
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self.memory_bytes = 0  # the state all streams hold

    def __len__(self) -> int:
        return len(self._streams)

    def find(self, stream_id: str) -> Stream | None:
        """The stream, if it is held; a request that fails creates none."""
        return self._streams.get(stream_id)

    def previous_state(self, stream: Stream, frame: int, temporal: bool, keyframe_interval: int) -> MatteState | None:
        """The state to continue from, or None to start over (the size check is the Matter's)."""
        if not temporal or stream.frame is None or frame != stream.frame + 1 or is_keyframe(frame, keyframe_interval):
            return None
        return stream.state

    def record(self, stream_id: str, frame: int, state: MatteState | None) -> Stream:
        """Keep ``state`` as the stream's latest, as its most recently used; the caller sets the
        reply to this frame once built."""
        stream = self._streams.pop(stream_id, None) or Stream()
        self.memory_bytes -= stream.nbytes
        stream.frame, stream.state, stream.last_reply, stream.last_used = frame, state, None, self._clock()
        self.memory_bytes += stream.nbytes
        self._streams[stream_id] = stream
        self.evict(keep=stream_id)
        return stream

    def before_slot_write(self, start: int, end: int, stream_id: str) -> None:
        """``stream_id``'s alpha is about to be written into memory [start, end), a client's slot:
        other streams whose alpha lies there get a copy of their own, and their cached replies
        there are dropped (their client has moved on from them). The stream's own state is
        read before it is overwritten (``compose``)."""
        for other_id, stream in self._streams.items():
            if other_id != stream_id:
                self._release(stream, start, end, copy=True, keep_reply=False)

    def release(self, start: int, end: int, copy: bool) -> None:
        """Memory [start, end) of a client's block is about to be unmapped (``copy``: alphas that lie
        there are copied out, cached replies follow them), or no longer holds them (the block
        shrank, a request's pixels lie there now, or the engine is stopping): those states and
        replies are forgotten, and the stream's next frame is computed in full."""
        for stream in self._streams.values():
            self._release(stream, start, end, copy, keep_reply=copy)

    def _release(self, stream: Stream, start: int, end: int, copy: bool, keep_reply: bool) -> None:
        kept = None if stream.state is None else stream.state.alpha
        if kept is not None and _overlaps(kept, start, end):
            if copy:
                stream.state = replace(stream.state, alpha=kept.clone())
            else:
                self._forget_state(stream)
        if stream.last_reply is None or stream.last_reply[2] is None:
            return
        request_id, frames, (block, offset, dtype, alpha) = stream.last_reply
        if not _overlaps(alpha, start, end):
            return
        if not keep_reply:
            stream.last_reply = None
            return
        if kept is not None and alpha.data_ptr() == kept.data_ptr():
            alpha = stream.state.alpha[0, 0]  # the reply's alpha is the state's, copied above: follow it
        else:
            alpha = alpha.clone()
        stream.last_reply = (request_id, frames, (block, offset, dtype, alpha))

    def _forget_state(self, stream: Stream) -> None:
        self.memory_bytes -= stream.nbytes
        stream.state = None

    def reset(self, stream_id: str) -> bool:
        return self._drop(stream_id) is not None

    def _drop(self, stream_id: str) -> Stream | None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self.memory_bytes -= stream.nbytes
        return stream

    def evict(self, keep: str | None = None) -> None:
        """Drop idle streams, then least recently used ones while over the memory budget."""
        now = self._clock()
        for stream_id in [s for s, stream in self._streams.items() if now - stream.last_used > self.idle_timeout_s]:
            if stream_id != keep:
                self._drop(stream_id)
                log.info("evicted stream %r: idle for over %.0f s", stream_id, self.idle_timeout_s)
        for stream_id in list(self._streams):
            if self.memory_bytes <= self.budget_bytes:
                return
            if stream_id != keep:
                self._drop(stream_id)
                log.info("evicted stream %r: memory budget of %d bytes reached", stream_id, self.budget_bytes)
        if keep in self._streams and self.memory_bytes > self.budget_bytes:
            # One stream alone is over budget: keep its position, drop its state (next frame computes in full).
            self._forget_state(self._streams[keep])
            log.warning("stream %r alone exceeds the memory budget; its temporal state is dropped", keep)
