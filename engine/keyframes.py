"""Keyframe mattes as guidance: an artist's mattes on a few frames, carried to the frames between
by the plate's motion (no torch here: the frames go to the job's ``matte`` callable).

On a keyframe its matte is the answer, written as it is. Every other frame takes the matte of
the keyframe before it (forward) and of the one after it (backward, when there is one), each
moved by the dense optical flow from that keyframe's plate straight to the frame's (OpenCV's
DIS flow on the luma, no learned weights): each pixel samples the keyframe's matte where it
was on the keyframe. The flow back is measured too, and a pixel's confidence is how far it
undoes the flow forward, exp(-(miss / CONSISTENCY_PX)^2) (none for a pixel that came from
beyond the frame's edge). Between two keyframes the frame's prior is the two carried mattes
blended by distance (``(k2 - t) / (k2 - k1)`` of the forward one) times each one's confidence,
and the frame is matted once with it (band and refinement as usual). Before the first
keyframe only the backward matte reaches, after the last only the forward one.

One flow from the keyframe, not a chain of flows from frame to frame: composed flows drift
with every step, and thin or see-through parts (hair, a veil) follow the background seen
through them (docs/QUALITY.md, "Guidance"). A frame's matte thus depends on its own plate and
its keyframes' only: a farm chunk that starts between keyframes gives what a whole run gives,
and a frame that cannot be read fails alone.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from sparsemat.plugin.frames import keyframes_around

from .imageio import read_alpha, write_alpha
from .job import FrameMatter, JobSummary, MatteJob, frame_label, matte_frame, read_inputs, write_output

FLOW_PRESET = "MEDIUM"  # DIS preset: ULTRAFAST, FAST or MEDIUM
# A pixel whose flow back misses its start by this many pixels keeps 1/e of its confidence.
CONSISTENCY_PX = 3.0
# Where both carried mattes have lost confidence, the blend falls back to the distance weights.
CONFIDENCE_FLOOR = 1e-6


def flow_origin(source_rgb: np.ndarray, target_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each target pixel came from in the source frame, (H, W, 2) absolute x, y, by the flow
    from the target to the source; and how well the flow back agrees, exp(-(miss / CONSISTENCY_PX)^2)
    (0 for pixels from beyond the frame)."""
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
    agreement[outside] = 0.0  # came from beyond the frame: the keyframe did not see it
    return origin, agreement


def _sample(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``values`` (H, W[, C]) at the (H, W, 2) positions ``where`` (bilinear, borders repeated)."""
    import cv2

    return cv2.remap(np.ascontiguousarray(values, np.float32), where[..., 0], where[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def run_keyframes(job: MatteJob, matte: FrameMatter, progress: bool = True, log: Callable[[str], None] | None = None,
                  on_frame: Callable[[int, int, str], None] | None = None) -> JobSummary:
    """``job``'s frames from its keyframe mattes (``job.keyframe_alphas``: frame -> file); the same
    summary and errors as ``run_job``. A frame that cannot be read or matted fails alone; a
    keyframe whose matte or plate cannot be read fails the frames that only it reaches."""
    from tqdm import tqdm

    summary = JobSummary(output=job.output.text)
    keys = sorted(job.keyframe_alphas)
    start = time.perf_counter()
    with tqdm(total=len(job.frames), unit="frame", disable=not progress, dynamic_ncols=True) as bar:
        say = log or (lambda message: bar.write(message))

        def done(frame, outcome):
            """``outcome``: (alpha, active fraction), or the message of a failed frame."""
            if isinstance(outcome, str):
                say(f"error: {outcome}")
                summary.failed.append((frame, outcome))
            else:
                alpha, active = outcome
                write_output(job.output.path(frame), frame_label(frame),
                             lambda path: write_alpha(path, alpha, half=job.half))
                summary.written += 1
                summary.active_fractions.append(active)
            bar.update()
            if on_frame is not None:
                on_frame(summary.written + len(summary.failed), len(job.frames),
                         f"{frame_label(frame)} {'failed' if isinstance(outcome, str) else 'written'}")

        keyframes: dict = {}  # keyframe -> (its matte, its plate), or the message of why it cannot be used
        for frame in job.frames:
            if frame in job.keyframe_alphas:
                try:
                    done(frame, (read_alpha(job.keyframe_alphas[frame]), 0.0))
                except (OSError, ValueError) as exc:
                    done(frame, f"cannot read the keyframe matte of {frame_label(frame)}: {exc}")
                continue
            before, after = keyframes_around(frame, keys)
            for stale in [key for key in keyframes if before is not None and key < before]:
                del keyframes[stale]  # the frames come in order: only the two around this one are needed
            for key in (before, after):
                if key is not None and key not in keyframes:
                    keyframes[key] = _keyframe(job, key)
            done(frame, _matte_between(job, matte, frame, before, after, keyframes))
    summary.seconds = time.perf_counter() - start
    return summary


def _keyframe(job: MatteJob, key: int):
    """(the keyframe's matte, its plate), or why it cannot be used."""
    try:
        alpha = read_alpha(job.keyframe_alphas[key])
    except (OSError, ValueError) as exc:
        return f"cannot start from keyframe {key}: {exc}"
    read = read_inputs(job, key)
    if isinstance(read, Exception):
        return f"cannot start from keyframe {key}: {read}"
    if alpha.shape != read.pixels.shape[:2]:
        return (f"the keyframe matte of frame {key} is {alpha.shape[1]}x{alpha.shape[0]}, its plate "
                f"{read.pixels.shape[1]}x{read.pixels.shape[0]}")
    return alpha, read.pixels


def _matte_between(job, matte, frame: int, before: int | None, after: int | None, keyframes: dict):
    """(alpha, active fraction) of ``frame`` from the keyframes either side of it (either None at an
    end), or the message of why it failed."""
    read = read_inputs(job, frame)
    if isinstance(read, Exception):
        return str(read)
    share = 1.0 if after is None else 0.0 if before is None else (after - frame) / (after - before)
    carried, reasons = [], []
    for key, weight in ((before, share), (after, 1.0 - share)):
        if key is None:
            continue
        keyframe = keyframes[key]
        if isinstance(keyframe, str):
            reasons.append(keyframe)
            continue
        alpha, plate = keyframe
        if alpha.shape != read.pixels.shape[:2]:
            reasons.append(f"{frame_label(frame)} is {read.pixels.shape[1]}x{read.pixels.shape[0]}, keyframe {key} "
                           f"{alpha.shape[1]}x{alpha.shape[0]}")
            continue
        origin, confidence = flow_origin(plate, read.pixels)
        carried.append((weight * (confidence + CONFIDENCE_FLOOR), np.clip(_sample(alpha, origin), 0.0, 1.0)))
    if not carried:
        return "; ".join(reasons)
    prior = sum(weight * alpha for weight, alpha in carried) / sum(weight for weight, _ in carried)
    outcome = matte_frame(job, matte, frame, read._replace(prior=prior.astype(np.float32)), new_stream=True)
    if isinstance(outcome, Exception):
        return str(outcome)
    alpha, stats = outcome
    return alpha, stats.active_fraction
