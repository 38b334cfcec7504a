"""Keyframe mattes as guidance: an artist's mattes on a few frames, carried to the frames between
by the plate's motion (no torch here: the frames go to the job's ``matte`` callable).

On a keyframe its matte is the answer, written as it is. From each keyframe a chain runs
forward (and, when a keyframe lies ahead, one runs back from it), following the dense optical
flow between consecutive plates (OpenCV's DIS flow on the luma, no learned weights) and
composing it, so each frame knows where each of its pixels was on the keyframe: the keyframe's
matte sampled there is the chain's carried matte, moved once, never re-sampled frame after
frame. Each step also measures how far the flow back undoes the flow forward, and a chain's
confidence in a pixel is the product of those agreements along the way (``CONSISTENCY_PX``;
none for a pixel that came from beyond the frame's edge).
Between two keyframes the frame's prior is the two carried mattes blended by distance
(``(k2 - t) / (k2 - k1)`` of the forward one) times each chain's confidence, and the frame is
matted once with it (band and refinement as usual). Before the first keyframe only the
backward chain reaches, after the last only the forward one.

The backward chain's carried mattes and confidences wait in memory for the forward pass (two
float maps a frame of the segment that is to be written); frames are then matted and written
in order. A chain
always runs from its keyframe, through frames that are not written too (a farm chunk that
starts between keyframes), so a frame's matte does not depend on how the range is split.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from .imageio import read_alpha, write_alpha
from .job import FrameMatter, JobSummary, MatteJob, frame_label, matte_frame, read_inputs, write_output
from .validation import FrameError

FLOW_PRESET = "MEDIUM"  # DIS preset: ULTRAFAST, FAST or MEDIUM
# A pixel whose flow back misses its start by this many pixels keeps 1/e of its confidence.
CONSISTENCY_PX = 3.0
# Where both chains have lost confidence, the blend falls back to the distance weights.
CONFIDENCE_FLOOR = 1e-6


class Carried(NamedTuple):
    """A chain at one frame: the keyframe's matte moved there, the chain's confidence in each pixel,
    and the frame's inputs (None when the chain does not keep them)."""

    alpha: np.ndarray
    confidence: np.ndarray
    read: object | None


def flow_step(source_rgb: np.ndarray, target_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each target pixel came from in the source frame, (H, W, 2) absolute x, y, by the flow
    from the target to the source; and how well the flow back agrees, exp(-(miss / CONSISTENCY_PX)^2)."""
    import cv2

    source, target = (np.round(np.clip(rgb @ np.float32([0.299, 0.587, 0.114]), 0, 1) * 255).astype(np.uint8)
                      for rgb in (source_rgb, target_rgb))
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{FLOW_PRESET}"))
    forward, backward = dis.calc(target, source, None), dis.calc(source, target, None)
    height, width = forward.shape[:2]
    grid = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))
    origin = grid + forward
    miss = forward + _sample(backward, origin)
    agreement = np.exp(-(miss ** 2).sum(axis=2) / CONSISTENCY_PX ** 2).astype(np.float32)
    outside = (origin[..., 0] < 0) | (origin[..., 0] > width - 1) | (origin[..., 1] < 0) | (origin[..., 1] > height - 1)
    agreement[outside] = 0.0  # came from beyond the frame: the chain has not seen it
    return origin, agreement


def _sample(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``values`` (H, W[, C]) at the (H, W, 2) positions ``where`` (bilinear, borders repeated)."""
    import cv2

    return cv2.remap(np.ascontiguousarray(values, np.float32), where[..., 0], where[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def run_keyframes(job: MatteJob, matte: FrameMatter, progress: bool = True, log: Callable[[str], None] | None = None,
                  on_frame: Callable[[int, int, str], None] | None = None) -> JobSummary:
    """``job``'s frames from its keyframe mattes (``job.keyframe_alphas``: frame -> file); the same
    summary and errors as ``run_job``. A frame that cannot be read fails, and the chains through
    it stop there: frames beyond it take the other chain only, or fail when none reaches. A frame
    that cannot be matted fails alone (the chains carry the keyframes' mattes, not results)."""
    from tqdm import tqdm

    summary = JobSummary(output=job.output.text)
    keys = sorted(job.keyframe_alphas)
    start = time.perf_counter()
    with tqdm(total=len(job.frames), unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        say = log or (lambda message: bar.write(message))

        chains_active: dict = {}  # frame -> the active fraction of its matte

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
    """``frames``, strictly between keyframes ``before`` and ``after`` (either None at an end), in order."""
    wanted = set(frames)
    backward = {} if after is None else {frame: carried for frame, carried in
                                         _carry(job, after, range(after - 1, frames[0] - 1, -1), keep=False)
                                         if frame in wanted}
    forward = ((frame, None) for frame in frames) if before is None else \
        _carry(job, before, range(before + 1, frames[-1] + 1), keep=True)
    for frame, ahead in forward:
        if frame not in wanted:
            continue
        behind = backward.get(frame)
        share = 1.0 if after is None else 0.0 if before is None else (after - frame) / (after - before)
        chains = [(weight, chain) for weight, chain in ((share, ahead), (1 - share, behind)) if isinstance(chain, Carried)]
        if not chains:
            reasons = "; ".join(str(r) for r in (ahead, behind) if isinstance(r, Exception))
            done(frame, None, reasons or f"no keyframe reaches {frame_label(frame)}")
            continue
        weights = [weight * (chain.confidence + CONFIDENCE_FLOOR) for weight, chain in chains]
        prior = sum(w * chain.alpha for w, (_, chain) in zip(weights, chains)) / sum(weights)
        read = ahead.read if isinstance(ahead, Carried) else read_inputs(job, frame)
        if isinstance(read, Exception):
            done(frame, None, str(read))
            continue
        outcome = matte_frame(job, matte, frame, read._replace(prior=prior.astype(np.float32)), new_stream=True)
        if isinstance(outcome, Exception):
            done(frame, None, str(outcome))
            continue
        alpha, stats = outcome
        chains_active[frame] = stats.active_fraction
        done(frame, alpha)


def _carry(job, key: int, frames, keep: bool):
    """(frame, Carried) along ``frames`` (in the chain's order, starting next to ``key``), each frame's
    inputs kept when ``keep``; an exception for the frame where the chain broke, None beyond it."""
    frames = list(frames)
    try:
        alpha = read_alpha(job.keyframe_alphas[key])
        previous = read_inputs(job, key)
    except (OSError, ValueError) as exc:
        previous = exc
    if isinstance(previous, Exception):
        yield frames[0], FrameError(f"cannot start from keyframe {key}: {previous}")
        yield from ((frame, None) for frame in frames[1:])
        return
    origin = confidence = None
    for index, frame in enumerate(frames):
        read = read_inputs(job, frame)
        if not isinstance(read, Exception) and alpha.shape != read.pixels.shape[:2]:
            read = FrameError(f"the keyframe matte of frame {key} is {alpha.shape[1]}x{alpha.shape[0]}, the plate "
                              f"{read.pixels.shape[1]}x{read.pixels.shape[0]}")
        if isinstance(read, Exception):
            yield frame, read
            yield from ((rest, None) for rest in frames[index + 1:])
            return
        step, agreement = flow_step(previous.pixels, read.pixels)
        origin = step if origin is None else _sample(origin, step)
        confidence = agreement if confidence is None else _sample(confidence, step) * agreement
        yield frame, Carried(np.clip(_sample(alpha, origin), 0.0, 1.0), confidence, read if keep else None)
        previous = read
