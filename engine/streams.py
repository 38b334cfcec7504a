"""Per-stream temporal state held by the engine, with least-recently-used eviction.

A stream is the host's name for one sequence (script, node, view). Its entry holds the
previous frame's :class:`MatteState` (the engine's own tensors: no client can touch them)
and the reply to its last request, so that a client retry of that request gets the same
answer without a second compute.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparsemat.plugin.frames import continues

from .matting import MatteState

if TYPE_CHECKING:
    import torch

log = logging.getLogger("sparsemat.engine")
MAX_WARNED_STREAMS = 1024  # evicted streams whose clients are still to be told why


@dataclass(frozen=True)
class CachedReply:
    """The reply to a stream's last request, for a retry of it. ``shm_alpha``: where the alpha went
    in the client's shared memory, (block, offset, dtype name), or None when it went inline;
    ``alpha``: the alpha itself (the state's), to write there again, since the client may have
    reused that slot since the reply it lost."""

    key: tuple  # what makes a request the same request (see the server's retry rule)
    frames: list
    shm_alpha: tuple | None = None
    alpha: torch.Tensor | None = None


@dataclass
class Stream:
    state: MatteState | None = None
    frame: int | None = None
    last_used: float = 0.0
    last_reply: CachedReply | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.state is None else self.state.nbytes


class StreamStore:
    """Streams by id, most recently used last. Only the engine's worker changes it; ``len`` and
    ``memory_bytes`` (a running total, not a walk over the streams) may be read from any thread."""

    def __init__(self, budget_bytes: int, idle_timeout_s: float, clock=time.monotonic):
        self.budget_bytes = budget_bytes
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self.memory_bytes = 0  # the state all streams hold
        # What happened to a stream's state that its client has not been told yet, by stream id
        # (evicted streams included, so their next request says why it started over).
        self._warnings: OrderedDict[str, list[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def find(self, stream_id: str) -> Stream | None:
        """The stream, if it is held; a request that fails creates none."""
        return self._streams.get(stream_id)

    def previous_state(self, stream: Stream | None, frame: int, temporal: bool, keyframe_interval: int
                       ) -> MatteState | None:
        """The state to continue from, or None to start over (the size check is the Matter's)."""
        if stream is None or not temporal or not continues(stream.frame, frame, keyframe_interval):
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

    def take_warnings(self, stream_id: str) -> list[str]:
        """What the client of ``stream_id`` should hear about its state since its last request."""
        return self._warnings.pop(stream_id, [])

    def _warn(self, stream_id: str, text: str) -> None:
        self._warnings.setdefault(stream_id, []).append(text)
        self._warnings.move_to_end(stream_id)
        while len(self._warnings) > MAX_WARNED_STREAMS:
            self._warnings.popitem(last=False)

    def reset(self, stream_id: str) -> bool:
        self._warnings.pop(stream_id, None)
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
                self._evict(stream_id, f"evicted: idle for over {self.idle_timeout_s:.0f} s")
        for stream_id in list(self._streams):
            if self.memory_bytes <= self.budget_bytes:
                return
            if stream_id != keep:
                self._evict(stream_id, f"evicted: the engine's memory budget of {self.budget_bytes} bytes was reached")
        if keep in self._streams and self.memory_bytes > self.budget_bytes:
            # One stream alone is over budget: keep its position, drop its state (next frame computes in full).
            stream = self._streams[keep]
            self.memory_bytes -= stream.nbytes
            stream.state = None
            self._warn(keep, f"its temporal state of frame {stream.frame} was dropped: alone it exceeds the engine's "
                             f"memory budget of {self.budget_bytes} bytes")
            log.warning("stream %r alone exceeds the memory budget; its temporal state is dropped", keep)

    def _evict(self, stream_id: str, why: str) -> None:
        self._drop(stream_id)
        self._warn(stream_id, f"the stream was {why}")
        log.info("stream %r %s", stream_id, why)
