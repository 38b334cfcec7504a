"""Errors and the checks that raise them, for every layer above: numpy only, no torch.

What a frame must be to be matted (finite pixels, a shape the prior network can take) is
decided here once, so the command line, the engine and the model refuse the same frames
with the same words. Exit codes of the ``sparsemat`` command live here too, so every
command and the job runner report failures alike.
"""
from __future__ import annotations

import math
import os

import numpy as np

EXIT_FAILED = 1  # the job ran but some frames failed, or it had to stop: permanent, retrying will not help
EXIT_USAGE = 2  # nothing was done: bad arguments, no frames, no checkpoint
EXIT_UNAVAILABLE = 3  # the engine could not be reached (not running, or lost mid-job): worth retrying
EXIT_IN_USE = 4  # another engine (or program) already serves that address

MAX_PIXELS = 4_000_000  # the published refinement budget: over it, the cascade
MIN_PIXELS = 64  # one 8 x 8 tile: the smallest budget the rescale rule can always meet
# The largest frame any model takes, checked before its pixels are decoded or read: a 16384 x
# 8192 plate (VR, the largest camera formats) at most, and no side over 32768. A 12000 x 12000
# PNG of 140 KB once took the engine to 6.3 GB before it failed.
MAX_FRAME_PIXELS = 16384 * 8192
MAX_FRAME_SIDE = 32768
PRIOR_SHORT_SIDE = 512
# The prior network's memory grows with its input's long side (measured on CPU: about 0.3 GB per
# 1024 px). 4096, a frame of up to about 8:1, is nearly three times the widest camera format
# (2.76:1 gives 1440) and costs about 1.3 GB; a 700x3 strip would need 119488 px, tens of GB.
PRIOR_MAX_LONG_SIDE = 4096
MAX_TRIMAP_DILATION = 256  # pixels on each side; more is no longer a trimap's band


class UsageError(Exception):
    """Nothing could start; the message says what is needed. ``exit_code``: what the command returns."""

    exit_code = EXIT_USAGE


class FrameError(ValueError):
    """The frame (or the prior given with it) cannot be matted: it holds NaN or infinite values, or
    its aspect ratio is too extreme for the prior network."""


def prior_input_size(height: int, width: int) -> tuple[int, int]:
    """The published rule: short side 512, each side rounded up to a multiple of 32. FrameError when
    the long side would be over ``PRIOR_MAX_LONG_SIDE``. Every model keeps this limit, the
    guided refiner too (it has no prior network, but a frame is matted the same by any model)."""
    short = min(height, width)
    size = (math.ceil(PRIOR_SHORT_SIDE / short * height / 32) * 32,
            math.ceil(PRIOR_SHORT_SIDE / short * width / 32) * 32)
    if max(size) > PRIOR_MAX_LONG_SIDE:
        raise FrameError(f"the frame is {width}x{height}, too elongated for the prior network, which would see it "
                         f"at {size[1]}x{size[0]}: over {PRIOR_MAX_LONG_SIDE} px on the long side (frames up to "
                         f"about {PRIOR_MAX_LONG_SIDE // PRIOR_SHORT_SIDE}:1 can be matted)")
    return size


def frame_size_problem(width: int, height: int, what: str = "frame") -> str | None:
    """Why a ``what`` of ``width`` x ``height`` cannot be matted by any model, or None: empty, over
    the size limits, or (for frames) too elongated for the prior network. Checked from a file's
    header or a request's shape, before any pixel is decoded."""
    if width < 1 or height < 1:
        return f"the {what} is {width}x{height}: empty"
    if width > MAX_FRAME_SIDE or height > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        return (f"the {what} is {width}x{height}, over the limit of {MAX_FRAME_PIXELS:,} pixels and "
                f"{MAX_FRAME_SIDE} px a side")
    if what == "frame":
        try:
            prior_input_size(height, width)
        except FrameError as exc:
            return str(exc)
    return None


def trimap_size_problem(trimap: tuple[int, int], frame: tuple[int, int]) -> str | None:
    """Why a trimap of (height, width) ``trimap`` cannot guide a frame of ``frame``, or None. It may
    have any resolution, but shows the frame's picture: its aspect ratio is the frame's, to one of
    its own pixels."""
    (height, width), (frame_height, frame_width) = trimap, frame
    if height < 1 or width < 1:
        return f"the trimap is empty ({width}x{height})"
    if abs(width * frame_height - height * frame_width) > max(frame_width, frame_height):
        return (f"the trimap is {width}x{height} (aspect {width / height:.3f}), the frame {frame_width}x{frame_height} "
                f"(aspect {frame_width / frame_height:.3f}): a trimap may have any resolution but must have the "
                f"frame's aspect ratio")
    return None


def non_finite_values(pixels: np.ndarray) -> str | None:
    """'N NaN/infinite pixel values (first at x=X, y=Y)' for (H, W) or (H, W, C) ``pixels``; None if all are finite."""
    bad = ~np.isfinite(pixels)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return None
    if bad.ndim == 3:
        bad = bad.any(axis=2)
    y, x = divmod(int(np.argmax(bad)), bad.shape[1])  # row-major: the top-most, then left-most one
    return f"{count} NaN/infinite pixel values (first at x={x}, y={y})"


def all_finite(pixels: np.ndarray) -> bool:
    """One summing pass: NaN and infinity reach the sum, so a finite sum means finite pixels (a
    non-finite sum from huge finite values is told apart by the exact count)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(pixels.sum(dtype=np.float64)):
            return True
    return non_finite_values(pixels) is None


def checkpoint_problem(path: str) -> str | None:
    """Why ``path`` cannot be a checkpoint file (missing, a folder), or None: checked before an
    engine starts, and by the loader."""
    if os.path.isdir(path):
        return f"checkpoint {path} is a folder, not a checkpoint file"
    if not os.path.isfile(path):
        return f"checkpoint not found: {path}"
    return None


def checkpoint_file(path: str | None) -> str | None:
    """A checkpoint given on the command line as an absolute path, checked to be a file before
    anything starts (UsageError); None when none is given."""
    if not path:
        return None
    problem = checkpoint_problem(path)
    if problem:
        raise UsageError(problem)
    return os.path.abspath(path)


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked as text (whether the device exists is
    known only once torch loads); ValueError otherwise."""
    name = text.strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValueError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N (N counts the GPUs CUDA_VISIBLE_DEVICES "
                     f"leaves visible, from 0)")
