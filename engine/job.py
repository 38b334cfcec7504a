"""A matte job over an image or a frame sequence: read, matte, write, report (no torch).

The job hands frames to a ``matte`` callable (``matting.InProcessMatter``, or
``remote.EngineMatter`` for a running engine: the same shape) and writes what comes back.
Errors are sorted by whether the run can go on:

- a frame that cannot be read (missing, truncated, NaN pixels) or matted (a
  shape the model cannot take): reported, the temporal stream restarts after
  it, the other frames are still done, and the job fails at the end;
- an output that cannot be written: the job stops at once;
- frames already written are never removed.

A frame that should continue its stream but comes back computed afresh (an engine that
evicted the stream or restarted since) is matted again after the frames since its stream
started, so every file is what one uninterrupted run gives; if the state is lost again, the
frame fails with a message saying so.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import numpy as np

from sparsemat.plugin.frames import continues, with_preroll

from .imageio import ImageReadError, ImageWriteError, read_alpha, read_plate, read_rgb, write_alpha, write_rgba
from .sequence import Pattern
from .validation import FrameError


class JobError(RuntimeError):
    """The job cannot go on; the message says why."""


class FrameMatter(Protocol):
    def __call__(self, frame_rgb: np.ndarray, frame: int | None, new_stream: bool, prior: np.ndarray | None = None,
                 trimap: np.ndarray | None = None, trimap_dilation: int = 0, clean_plate: np.ndarray | None = None,
                 plate_colours: np.ndarray | None = None) -> tuple[np.ndarray, object]:
        """Alpha (H, W) float32 and the frame's stats (with ``active_fraction``, ``note`` and
        ``continued``: whether the frame was given its stream's previous state; with
        ``plate_colours``, the plate's own colours, ``foreground``: (H, W, 4) premultiplied RGBA);
        FrameError for pixels the model cannot take."""


class FrameInputs(NamedTuple):
    """What ``read_inputs`` reads for one frame."""
    pixels: np.ndarray  # display-encoded RGB, as the model takes it
    prior: np.ndarray | None
    trimap: np.ndarray | None
    clean_plate: np.ndarray | None
    colours: np.ndarray | None  # the plate's own colours, read only when a foreground is written


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
    trimap: Pattern | None = None
    trimap_dilation: int = 0  # pixels the trimap's unknown region grows by on each side
    clean_plate: Pattern | None = None  # one picture for every frame, or a sequence
    foreground: Pattern | None = None  # where the premultiplied foregrounds go (EXR), when asked for
    keyframe_alphas: dict = field(default_factory=dict)  # frame -> an artist's matte file (keyframes.py)
    keyframe_interval: int = 0  # > 0: frames that are multiples of it start the temporal stream


@dataclass
class JobSummary:
    output: str = ""  # where the mattes go
    written: int = 0
    skipped: int = 0
    prerolled: int = 0  # matted only to rebuild temporal state, not written
    failed: list = field(default_factory=list)  # (frame, message)
    restarted: list = field(default_factory=list)  # (frame, failed frame): a stream restarted after a failure
    seconds: float = 0.0
    active_fractions: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        # The whole run's time (reads, pre-rolled and failed frames included) over the frames written.
        preroll = f", {self.prerolled} pre-rolled" if self.prerolled else ""
        text = (f"{self.written} frame(s) written, {self.skipped} skipped, {len(self.failed)} failed{preroll} "
                f"in {self.seconds:.1f} s")
        if self.written:
            text += (f" ({self.seconds / self.written:.2f} s per written frame); mean active fraction "
                     f"{float(np.mean(self.active_fractions)):.2%}")
        text += f"\nmattes: {os.path.abspath(self.output)}"
        for frame, message in self.failed:
            text += f"\n  failed: {message}"
        for frame, failed in self.restarted:
            text += (f"\n  restarted: frame {frame} and the frames after it in its stream (up to the next keyframe) "
                     f"come from a stream restarted after frame {failed} failed, not from one uninterrupted run")
        return text


def work_list(job: MatteJob, frames: list) -> list[tuple[object, bool]]:
    """(frame, write) in order. With a keyframe interval, each run of frames is preceded by the
    frames since the last keyframe (back to the first missing input), matted but not written,
    so a frame's alpha is the same however the range is split into chunks."""
    if frames == [None]:  # a single image
        return [(None, True)]
    interval = job.keyframe_interval if job.temporal else 0
    return with_preroll(frames, interval, lambda frame: os.path.exists(job.input.path(frame)))


def frame_label(frame) -> str:
    return "image" if frame is None else f"frame {frame}"


def run_job(job: MatteJob, matte: FrameMatter, progress: bool = True, log: Callable[[str], None] | None = None,
            on_frame: Callable[[int, int, str], None] | None = None) -> JobSummary:
    """Run ``job``; raises JobError when it cannot go on (what was written stays). ``on_frame(done,
    total, what)`` is told of each frame once it is finished (written, failed or pre-rolled)."""
    from tqdm import tqdm

    summary = JobSummary(output=job.output.text)
    todo = [f for f in job.frames if not (job.skip_existing and os.path.exists(job.output.path(f)))]
    summary.skipped = len(job.frames) - len(todo)
    work = work_list(job, todo)
    start = time.perf_counter()
    previous = None  # the last frame matted in this stream
    stream_start = None  # the frame this stream started at
    failed = None  # the frame that failed last, when the one after it has not been matted yet
    # Read one frame ahead so decoding overlaps the matte of the current frame.
    # One rate, in frames per second (tqdm's own flips to s/frame below 1 and counts pre-rolls).
    bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}{postfix}]"
    with (tqdm(total=len(work), unit="frame", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               bar_format=bar_format) as bar,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsemat-read") as reader):
        say = log or (lambda message: bar.write(message, file=sys.stderr))
        pending: Future | None = reader.submit(read_inputs, job, work[0][0]) if work else None
        for index, (frame, write) in enumerate(work):
            read = pending.result()
            pending = reader.submit(read_inputs, job, work[index + 1][0]) if index + 1 < len(work) else None
            new_stream = not (job.temporal and continues(previous, frame, job.keyframe_interval))
            outcome = read if isinstance(read, Exception) else matte_frame(job, matte, frame, read, new_stream)
            if not isinstance(outcome, Exception) and not (new_stream or outcome[1].continued):
                say(f"{frame_label(frame)}: the engine no longer held this stream's state (evicted or restarted); "
                    f"matting frames {stream_start}-{previous} again first")
                outcome = _resume(job, matte, frame, read, stream_start, summary)
            if isinstance(outcome, Exception):
                say(f"error: {outcome}" if write else f"pre-roll {frame_label(frame)} skipped: {outcome}")
                if write:
                    summary.failed.append((frame, str(outcome)))
                previous, failed = None, frame
            else:
                alpha, stats = outcome
                if new_stream:
                    stream_start = frame
                    if job.temporal and continues(failed, frame, job.keyframe_interval):
                        say(f"{frame_label(frame)}: computed from a restarted stream: frame {failed} failed")
                        summary.restarted.append((frame, failed))
                previous, failed = frame, None
                if stats.note:
                    say(f"{frame_label(frame)}: {stats.note}")
                if write:
                    write_output(job.output.path(frame), frame_label(frame),
                                 lambda path: write_alpha(path, alpha, half=job.half))
                    if job.foreground is not None:
                        write_output(job.foreground.path(frame), f"the foreground of {frame_label(frame)}",
                                     lambda path: write_rgba(path, stats.foreground, half=job.half))
                    summary.written += 1
                    summary.active_fractions.append(stats.active_fraction)
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"{summary.written / elapsed:.2f} written frames/s, "
                                        f"active {stats.active_fraction:.1%}")
                else:
                    summary.prerolled += 1
            bar.update()  # only now: the bar never counts a frame that is still being matted
            if on_frame is not None:
                state = "failed" if isinstance(outcome, Exception) else "written" if write else "pre-rolled"
                on_frame(index + 1, len(work), f"{frame_label(frame)} {state}")
    summary.seconds = time.perf_counter() - start
    return summary


def matte_frame(job: MatteJob, matte: FrameMatter, frame, read: FrameInputs, new_stream: bool):
    """(alpha, stats) of a frame read as ``read``, or a FrameError naming the file whose pixels the
    model cannot take."""
    try:
        return matte(read.pixels, frame, new_stream=new_stream, prior=read.prior, trimap=read.trimap,
                     trimap_dilation=job.trimap_dilation, clean_plate=read.clean_plate, plate_colours=read.colours)
    except FrameError as exc:
        return FrameError(f"cannot matte '{job.input.path(frame)}': {exc}")


def _resume(job: MatteJob, matte: FrameMatter, frame: int, read: FrameInputs, stream_start: int, summary: JobSummary):
    """``frame`` matted again after the frames of its stream before it, from ``stream_start``, as
    one uninterrupted run mattes it; a FrameError when one of them fails or the state is lost
    again (a memory budget too small for one stream, say)."""
    for number in range(stream_start, frame):
        earlier = read_inputs(job, number)
        outcome = earlier if isinstance(earlier, Exception) else matte_frame(job, matte, number, earlier,
                                                                             number == stream_start)
        if isinstance(outcome, Exception):
            return FrameError(f"cannot resume the stream for {frame_label(frame)}: frame {number}: {outcome}")
        if number != stream_start and not outcome[1].continued:
            return _lost_again(frame)
        summary.prerolled += 1
    outcome = matte_frame(job, matte, frame, read, new_stream=False)
    if isinstance(outcome, Exception) or outcome[1].continued:
        return outcome
    return _lost_again(frame)


def _lost_again(frame: int) -> FrameError:
    return FrameError(f"cannot matte {frame_label(frame)} as one uninterrupted run would: the engine lost this "
                      f"stream's temporal state again (its memory budget may be too small for one stream, or it "
                      f"restarted); see its log")


def write_output(path: str, what: str, write: Callable[[str], None]) -> None:
    """``write(path)``, creating its folder first, so a run that writes nothing leaves none behind;
    JobError naming ``what`` when either fails."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        blocking = next(part for part in _parents(folder) if os.path.exists(part) and not os.path.isdir(part))
        raise JobError(f"cannot create the output folder {folder}: {blocking} is a file, not a folder") from None
    except OSError as exc:
        raise JobError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    try:
        write(path)
    except (ImageWriteError, OSError, ValueError) as exc:
        raise JobError(f"cannot write {what}: {exc}") from exc


def _parents(folder: str) -> list[str]:
    """``folder`` and the folders above it, the topmost first."""
    parts = []
    while folder and folder not in parts:
        parts.append(folder)
        folder = os.path.dirname(folder)
    return parts[::-1]


def read_inputs(job: MatteJob, frame) -> FrameInputs | Exception:
    """One frame's inputs, or the exception that stopped the read."""
    try:
        if job.foreground is None:
            pixels, colours = read_rgb(job.input.path(frame), job.colourspace), None
        else:
            pixels, colours = read_plate(job.input.path(frame), job.colourspace)
        prior, trimap = (None if guide is None else read_alpha(guide.path(frame)) for guide in (job.prior, job.trimap))
        plate = None
        if job.clean_plate is not None:
            path = job.clean_plate.path(frame)
            plate = _read_plate(path, job.colourspace, os.stat(path).st_mtime_ns)
        return FrameInputs(pixels, prior, trimap, plate, colours)
    except (ImageReadError, OSError, ValueError) as exc:
        return exc


@functools.lru_cache(maxsize=1)
def _read_plate(path: str, colourspace: str | None, modified: int) -> np.ndarray:
    """A clean plate, read once while every frame uses the same one (and the file is unchanged);
    the frames share the array, which matting only reads."""
    return read_rgb(path, colourspace)


def runner(job: MatteJob) -> Callable:
    """``run_job``, or ``keyframes.run_keyframes`` for a job guided by keyframe mattes (the same
    arguments and summary)."""
    if not job.keyframe_alphas:
        return run_job
    from .keyframes import run_keyframes  # a module of this layer that builds on this one

    return run_keyframes


def openjd_progress(done: int, total: int, what: str) -> None:
    """Open Job Description's progress and status lines (openjd_progress: PERCENT, openjd_status:
    TEXT) on stdout, which a farm's worker agent reads as the task's progress."""
    print(f"openjd_progress: {100.0 * done / max(total, 1):.1f}\nopenjd_status: {what} ({done}/{total})", flush=True)
