"""A matte job over an image or a frame sequence: read, matte, write, report.

The job knows nothing of torch: it hands frames to a ``matte`` callable
(:class:`InProcessMatter` here; a remote engine client has the same shape) and
writes what comes back. Errors are sorted by whether the run can go on:

- a frame that cannot be read (missing, truncated, NaN pixels) or matted (a
  shape the model cannot take): reported, the temporal stream restarts after
  it, the other frames are still done, and the job fails at the end;
- an output that cannot be written: the job stops at once;
- frames already written are never removed.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Protocol

import numpy as np

from sparsemat.plugin.frames import with_preroll

from .imageio import ImageReadError, ImageWriteError, read_alpha, read_rgb, write_alpha
from .matting import FrameError
from .sequence import Pattern


class JobError(RuntimeError):
    """The job cannot go on; the message says why."""


class FrameMatter(Protocol):
    def __call__(self, frame_rgb: np.ndarray, frame: int | None, new_stream: bool, prior: np.ndarray | None = None
                 ) -> tuple[np.ndarray, object]:
        """Alpha (H, W) float32 and the frame's stats (with ``active_fraction`` and ``note``); FrameError
        for pixels the model cannot take."""


@dataclass
class MatteJob:
    input: Pattern
    output: Pattern
    frames: list  # frame numbers, or [None] for a single image
    temporal: bool = True
    skip_existing: bool = False
    colourspace: str | None = None
    half: bool = False
    prior: Pattern | None = None
    keyframe_interval: int = 0  # > 0: frames that are multiples of it start the temporal stream


@dataclass
class JobSummary:
    output: str = ""  # where the mattes go
    written: int = 0
    skipped: int = 0
    prerolled: int = 0  # matted only to rebuild temporal state, not written
    failed: list = field(default_factory=list)  # (frame, message)
    seconds: float = 0.0
    active_fractions: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        # The whole run's time (reads, pre-rolled and failed frames included) over the frames written.
        per_frame = self.seconds / self.written if self.written else 0.0
        mean_active = float(np.mean(self.active_fractions)) if self.active_fractions else 0.0
        preroll = f", {self.prerolled} pre-rolled" if self.prerolled else ""
        text = (f"{self.written} frame(s) written, {self.skipped} skipped, {len(self.failed)} failed{preroll} "
                f"in {self.seconds:.1f} s ({per_frame:.2f} s per written frame); "
                f"mean active fraction {mean_active:.2%}\nmattes: {os.path.abspath(self.output)}")
        for frame, message in self.failed:
            text += f"\n  failed: {message}"
        return text


def work_list(job: MatteJob, frames: list) -> list[tuple[object, bool]]:
    """(frame, write) in order. With a keyframe interval, each run of frames is preceded by the
    frames since the last keyframe (back to the first missing input), matted but not written,
    so a frame's alpha is the same however the range is split into chunks."""
    if frames == [None]:  # a single image
        return [(None, True)]
    interval = job.keyframe_interval if job.temporal else 0
    return with_preroll(frames, interval, lambda frame: os.path.exists(job.input.path(frame)))


def _frame_label(frame) -> str:
    return "image" if frame is None else f"frame {frame}"


def run_job(job: MatteJob, matte: FrameMatter, progress: bool = True, log: Callable[[str], None] | None = None
            ) -> JobSummary:
    """Run ``job``; raises JobError when it cannot go on (what was written stays)."""
    from tqdm import tqdm

    summary = JobSummary(output=job.output.text)
    todo = [f for f in job.frames if not (job.skip_existing and os.path.exists(job.output.path(f)))]
    summary.skipped = len(job.frames) - len(todo)
    work = work_list(job, todo)
    start = time.perf_counter()
    previous = None  # the last frame matted in this stream
    # Read one frame ahead so decoding overlaps the matte of the current frame.
    with (tqdm(total=len(work), unit="frame", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsemat-read") as reader):
        say = log or (lambda message: bar.write(message, file=sys.stderr))
        pending: Future | None = reader.submit(_read, job, work[0][0]) if work else None
        for index, (frame, write) in enumerate(work):
            read = pending.result()
            pending = reader.submit(_read, job, work[index + 1][0]) if index + 1 < len(work) else None
            outcome = read if isinstance(read, Exception) else _matte_frame(job, matte, frame, read, previous)
            if isinstance(outcome, Exception):
                say(f"error: {outcome}" if write else f"pre-roll {_frame_label(frame)} skipped: {outcome}")
                if write:
                    summary.failed.append((frame, str(outcome)))
                previous = None
            else:
                alpha, stats = outcome
                previous = frame
                if getattr(stats, "note", ""):
                    say(f"{_frame_label(frame)}: {stats.note}")
                if write:
                    _write(job, frame, alpha)
                    summary.written += 1
                    summary.active_fractions.append(stats.active_fraction)
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"{summary.written / elapsed:.2f} fps, active {stats.active_fraction:.1%}")
                else:
                    summary.prerolled += 1
            bar.update()  # only now: the bar never counts a frame that is still being matted
    summary.seconds = time.perf_counter() - start
    return summary


def _matte_frame(job: MatteJob, matte: FrameMatter, frame, read: tuple, previous):
    """(alpha, stats) of a frame read as ``read``, continuing the stream from frame ``previous``
    when it may, or a FrameError naming the file whose pixels the model cannot take."""
    pixels, prior = read
    contiguous = previous is not None and frame is not None and frame == previous + 1
    keyframe = job.keyframe_interval > 0 and frame is not None and frame % job.keyframe_interval == 0
    try:
        return matte(pixels, frame, new_stream=keyframe or not (job.temporal and contiguous), prior=prior)
    except FrameError as exc:
        return FrameError(f"cannot matte '{job.input.path(frame)}': {exc}")


def _write(job: MatteJob, frame, alpha: np.ndarray) -> None:
    """Write one matte, creating the output folder first, so a run that writes nothing leaves none
    behind; JobError when either fails."""
    path = job.output.path(frame)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    try:
        write_alpha(path, alpha, half=job.half)
    except (ImageWriteError, OSError, ValueError) as exc:
        raise JobError(f"cannot write {_frame_label(frame)}: {exc}") from exc


def _read(job: MatteJob, frame):
    """(pixels, prior) of one frame, or the exception that stopped the read."""
    try:
        pixels = read_rgb(job.input.path(frame), job.colourspace)
        prior = read_alpha(job.prior.path(frame)) if job.prior is not None else None
        return pixels, prior
    except (ImageReadError, OSError, ValueError) as exc:
        return exc


class InProcessMatter:
    """Keeps one stream's temporal state between calls and runs the model in this process."""

    def __init__(self, matter):
        self.matter = matter
        self.state = None

    def __call__(self, frame_rgb: np.ndarray, frame: int | None, new_stream: bool, prior: np.ndarray | None = None):
        import torch

        frame = torch.from_numpy(frame_rgb)
        prior_t = None if prior is None else torch.from_numpy(prior)
        alpha, state, stats = self.matter.matte(frame, None if new_stream else self.state, prior=prior_t)
        self.state = state
        return alpha.cpu().numpy(), stats


class EngineMatter:
    """The same through a running engine: one stream per job, pixels by shared memory when local."""

    def __init__(self, client, stream: str, max_pixels: int | None = None):
        self.client = client
        self.stream = stream
        self.max_pixels = max_pixels
        self.transport = "shm" if client.address.startswith("ipc://") else "inline"

    def __call__(self, frame_rgb: np.ndarray, frame: int | None, new_stream: bool, prior: np.ndarray | None = None):
        from sparsemat.plugin.client import EngineError

        try:
            alpha, stats = self.client.matte(self.stream, 0 if frame is None else frame, frame_rgb,
                                             transport=self.transport, colourspace="srgb", prior=prior,
                                             temporal=not new_stream, max_pixels=self.max_pixels)
        except EngineError as exc:
            if exc.code != "bad_pixels":  # the engine's FrameError: the frame fails alone, as in process
                raise
            raise FrameError(str(exc)) from exc
        return np.asarray(alpha, dtype=np.float32), SimpleNamespace(**stats)
