"""A range of frames matted in order, one step at a time: plain Python, no ``bpy``, no torch.

The host renders each input frame in its main thread (``render(frame) -> plate file``); a
worker thread has the engine matte it and writes the alpha, so Blender renders the next
plate while the engine works on this one. The same steps run under both drivers: Blender's
GUI calls ``step()`` from a modal operator's timer, so the interface stays live between
frames; ``blender -b`` calls it in a loop.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable

from sparsemat.plugin import host

AHEAD = 1  # plates rendered before the engine has finished the previous one


@dataclass(frozen=True)
class Failure:
    frame: int
    message: str  # one line, for Blender's report area


class MatteJob:
    """Mattes ``frames`` (already pre-rolled) of one stream, writing ``alpha_path(frame)`` for each.

    A failed frame (its render or its matte) ends the job there: the frames before it are still
    matted, none after it reaches the engine. Cancelling lets the frame the engine has finish."""

    def __init__(self, settings: host.Settings, stream: str, frames: list[int], render: Callable[[int], str],
                 alpha_path: Callable[[int], str], tracker: host.StreamTracker):
        self.settings, self.stream, self.frames = settings, stream, list(frames)
        self._render, self._alpha_path, self._tracker = render, alpha_path, tracker
        self.matted: list[int] = []
        self.status = ""  # the last frame's status line
        self.failure: Failure | None = None
        self.cancelled = False
        self._rendered = 0  # plates handed to the worker (positions in ``frames``)
        self._answered = 0  # of those, how many the worker has answered for
        self._lock = threading.Lock()
        self._limit = len(self.frames)  # the worker mattes only positions below this
        self._ended = False  # the worker was told there is nothing more
        self._plates: queue.Queue = queue.Queue()  # (position, frame, plate file); None ends the worker
        self._results: queue.Queue = queue.Queue()  # (frame, stats, a Failure, or None when skipped)
        self._worker = threading.Thread(target=self._work, name=f"sparsemat-{stream}", daemon=True)
        self._worker.start()

    @property
    def total(self) -> int:
        return len(self.frames)

    @property
    def over(self) -> bool:
        return not self._worker.is_alive() and self._results.empty()

    def step(self, wait: float = 0.0) -> bool:
        """Main thread: take what the worker has answered (waiting up to ``wait`` seconds when there is
        nothing to render meanwhile), render the next plate when the worker has room. False once over."""
        self._take(wait if not self._may_render() and self._answered < self._rendered else 0.0)
        if self._may_render():
            position, frame = self._rendered, self.frames[self._rendered]
            try:
                plate = self._render(frame)
            except Exception as exc:  # the host's render failed
                self._fail(position, frame, host.describe(exc, self.settings.address))
            else:
                self._rendered += 1
                self._plates.put((position, frame, plate))
        if not self._ended and (self._rendered == self.total or self.failure or self.cancelled):
            self._ended = True
            self._plates.put(None)
        return not self.over

    def cancel(self) -> None:
        """Stop before the next frame (the one the engine is matting finishes)."""
        self.cancelled = True
        self._stop_below(0)

    def run(self) -> None:
        """Every step, in the calling thread (``blender -b``, scripts)."""
        while self.step(wait=0.1):
            pass

    def _may_render(self) -> bool:
        return (not (self.failure or self.cancelled) and self._rendered < self.total
                and self._rendered - self._answered <= AHEAD)

    def _stop_below(self, position: int) -> None:
        with self._lock:
            self._limit = min(self._limit, position)

    def _take(self, wait: float) -> None:
        try:
            frame, outcome = self._results.get(timeout=wait) if wait > 0 else self._results.get_nowait()
        except queue.Empty:
            return
        while True:
            self._answered += 1
            if isinstance(outcome, Failure):
                self._fail(None, frame, outcome.message)
            elif outcome is not None:
                self.matted.append(frame)
                self._tracker.matted(self.stream, self.settings, frame)
                self.status = host.status_line(frame, outcome)
            try:
                frame, outcome = self._results.get_nowait()
            except queue.Empty:
                return

    def _fail(self, position: int | None, frame: int, message: str) -> None:
        if position is not None:
            self._stop_below(position)
        if self.failure is None:
            self.failure = Failure(frame, message)
        self._tracker.matted(self.stream, self.settings, None)

    def _work(self) -> None:
        while True:
            item = self._plates.get()
            if item is None:
                return
            position, frame, plate = item
            with self._lock:
                wanted = position < self._limit
            if not wanted:
                host.remove_files(plate)
                self._results.put((frame, None))
                continue
            try:
                stats = host.matte(self.settings, self.stream, frame, plate, self._alpha_path(frame))
            except Exception as exc:
                self._stop_below(position + 1)  # now: the frames queued behind it must not reach the engine
                self._results.put((frame, Failure(frame, host.describe(exc, self.settings.address))))
            else:
                self._results.put((frame, stats))
