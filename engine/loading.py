"""A ready Matter from a checkpoint and a device name: what every command and the engine load.

Errors are this module's own (``ModelLoadError``, one line naming what is wrong); the command
line turns them into usage errors, the engine into its ``failed`` state.
"""
from __future__ import annotations

import torch

from .matting import Matter
from .model import CheckpointError, SparseMat
from .validation import MAX_PIXELS, device_name


class ModelLoadError(ValueError):
    """The model cannot be loaded as asked: a bad checkpoint, a device that is not there."""


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (see ``validation.device_name``) names here; ``auto`` is the first GPU
    when torch sees one, else the CPU."""
    try:
        name = device_name(name)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"no such device: {name} (torch sees no CUDA device here)")
    device = torch.device("cuda:0" if name == "cuda" else name)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ModelLoadError(f"no such device: {name} (torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1})")
    return device


def load_matter(checkpoint: str | None, device: str = "auto", max_pixels: int | None = None,
                backend: str = "torch", half: bool = False) -> Matter:
    """The model from ``checkpoint`` ready on ``device``, or the weight-free guided refiner when
    there is no checkpoint; ModelLoadError says what is wrong."""
    where = resolve_device(device)
    if half and where.type != "cuda":
        raise ModelLoadError("--float16-network needs a CUDA device")
    try:
        model = SparseMat.from_checkpoint(checkpoint) if checkpoint else None
        return Matter(model, device=where, max_pixels=max_pixels or MAX_PIXELS, backend=backend, half=half)
    except (CheckpointError, ValueError, ImportError) as exc:
        raise ModelLoadError(str(exc)) from exc
