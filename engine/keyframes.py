"""Keyframe mattes as guidance: an artist's mattes on a few frames, carried to the frames between
by the plate's motion (no torch here: the frames go to the job's ``matte`` callable).

On a keyframe its matte is the answer, written as it is. From each keyframe a chain runs
forward (and, when a keyframe lies ahead, one runs back from it): each frame's prior is the
chain's previous result moved by the dense optical flow between the two frames (OpenCV's DIS
flow on the plates' luma, no learned weights), and its result is the matte of the frame with
that prior (band and refinement as usual). Between two keyframes the frame's matte is the two
chains' results blended by distance: ``(k2 - t) / (k2 - k1)`` of the forward one. Before the
first keyframe only the backward chain reaches, after the last only the forward one.

Each frame between keyframes is therefore read and matted twice (once a chain); the forward
chain's results wait in memory for the backward pass, one alpha a frame of the segment. A
chain always runs from its keyframe, through frames that are not written too (a farm chunk
that starts between keyframes), so a frame's matte does not depend on how the range is split.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .imageio import read_alpha, write_alpha
from .job import FrameMatter, JobSummary, MatteJob, frame_label, matte_frame, read_inputs, write_output
from .validation import FrameError

FLOW_PRESET = "MEDIUM"  # DIS preset: ULTRAFAST, FAST or MEDIUM


def flow_warp(alpha: np.ndarray, source_rgb: np.ndarray, target_rgb: np.ndarray) -> np.ndarray:
    """``alpha`` of the source frame moved onto the target frame: each target pixel takes the alpha
    where the flow from the target to the source says it came from (bilinear, borders repeated)."""
    import cv2

    source, target = (np.round(np.clip(rgb @ np.float32([0.299, 0.587, 0.114]), 0, 1) * 255).astype(np.uint8)
                      for rgb in (source_rgb, target_rgb))
    flow = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{FLOW_PRESET}")).calc(target, source, None)
    height, width = alpha.shape
    y, x = np.mgrid[:height, :width].astype(np.float32)
    return cv2.remap(np.ascontiguousarray(alpha, np.float32), x + flow[..., 0], y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def run_keyframes(job: MatteJob, matte: FrameMatter, progress: bool = True, log: Callable[[str], None] | None = None,
                  on_frame: Callable[[int, int, str], None] | None = None) -> JobSummary:
    """``job``'s frames from its keyframe mattes (``job.keyframe_alphas``: frame -> file); the same
    summary and errors as ``run_job``. A frame that cannot be read or matted fails, and the chains
    through it stop there: frames beyond it take the other chain only, or fail when none reaches."""
    from tqdm import tqdm

    summary = JobSummary(output=job.output.text)
    keys = sorted(job.keyframe_alphas)
    start = time.perf_counter()
    with tqdm(total=len(job.frames), unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        say = log or (lambda message: bar.write(message))

        chains_active: dict = {}  # frame -> the active fraction of its chains' mattes

        def done(frame, alpha, message=None):
            if message is None:
                write_output(job.output.path(frame), frame_label(frame),
                             lambda path: write_alpha(path, alpha, half=job.half))
                summary.written += 1
                summary.active_fractions.append(0.0 if frame in job.keyframe_alphas else chains_active[frame])
            else:
                say(f"error: {message}")
                summary.failed.append((frame, message))
            bar.update()
            if on_frame is not None:
                on_frame(summary.written + len(summary.failed), len(job.frames),
                         f"{frame_label(frame)} {'written' if message is None else 'failed'}")

        wanted = set(job.frames)
        for frame in keys:
            if frame in wanted:
                try:
                    done(frame, read_alpha(job.keyframe_alphas[frame]))
                except (OSError, ValueError) as exc:
                    done(frame, None, f"cannot read the keyframe matte of {frame_label(frame)}: {exc}")
        bounds = [None, *keys, None]
        for before, after in zip(bounds[:-1], bounds[1:]):
            first = job.frames[0] if before is None else before + 1
            last = job.frames[-1] if after is None else after - 1
            segment = [f for f in range(first, last + 1) if f in wanted]
            if segment:
                _segment(job, matte, before, after, segment, chains_active, done)
    summary.seconds = time.perf_counter() - start
    return summary


def _segment(job, matte, before, after, frames, chains_active, done) -> None:
    """``frames``, strictly between keyframes ``before`` and ``after`` (either None at an end)."""
    forward = {} if before is None else _chain(job, matte, before, list(range(before + 1, frames[-1] + 1)))
    backward = {} if after is None else _chain(job, matte, after, list(range(after - 1, frames[0] - 1, -1)))
    for frame in frames[::-1]:
        ahead, behind = forward.get(frame), backward.get(frame)
        results = [r for r in (ahead, behind) if not isinstance(r, Exception) and r is not None]
        if not results:
            reasons = "; ".join(str(r) for r in (ahead, behind) if isinstance(r, Exception))
            done(frame, None, reasons or f"no keyframe reaches {frame_label(frame)}")
            continue
        if len(results) == 2:
            weight = (after - frame) / (after - before)
            alpha = weight * ahead[0] + (1 - weight) * behind[0]
            chains_active[frame] = (ahead[1] + behind[1]) / 2
        else:
            alpha, chains_active[frame] = results[0]
        done(frame, alpha.astype(np.float32))


def _chain(job, matte, key: int, frames: list) -> dict:
    """frame -> (alpha, active fraction) along ``frames`` (in the chain's order, starting next to
    ``key``), each matted with the previous result moved onto it as its prior; an exception for
    the frame where the chain broke, nothing beyond it."""
    results = {}
    try:
        alpha = read_alpha(job.keyframe_alphas[key])
        previous = read_inputs(job, key)
    except (OSError, ValueError) as exc:
        return {frames[0]: FrameError(f"cannot start from keyframe {key}: {exc}")}
    if isinstance(previous, Exception):
        return {frames[0]: FrameError(f"cannot start from keyframe {key}: {previous}")}
    for frame in frames:
        read = read_inputs(job, frame)
        if isinstance(read, Exception):
            results[frame] = read
            return results
        height, width = read.pixels.shape[:2]
        if alpha.shape != (height, width):
            results[frame] = FrameError(f"the keyframe matte of frame {key} is {alpha.shape[1]}x{alpha.shape[0]}, "
                                        f"the plate {width}x{height}")
            return results
        outcome = matte_frame(job, matte, frame, read._replace(prior=flow_warp(alpha, previous.pixels, read.pixels)),
                              new_stream=True)
        if isinstance(outcome, Exception):
            results[frame] = outcome
            return results
        alpha, stats = outcome
        results[frame] = (alpha, stats.active_fraction)
        previous = read
    return results
