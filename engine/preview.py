"""``sparsemat preview``: a PNG contact sheet of one frame, for people who would rather look.

Four tiles, left to right: the plate; the alpha; the plate composited over a
checkerboard with the alpha; the plate dimmed, with the refined band in red and,
when a previous frame exists, the changed (temporal) pixels in blue.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .inputs import NEEDS_A_SOURCE, plates, refuse_overwriting
from .validation import EXIT_FAILED, UsageError

CHECKER = 16  # checkerboard square, in tile pixels


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=(height, width), mode="area")[0]
    return out[0].numpy() if image.ndim == 2 else out.permute(1, 2, 0).numpy()


def contact_sheet(plate: np.ndarray, alpha: np.ndarray, band: np.ndarray, changed: np.ndarray | None,
                  tile_width: int = 480) -> np.ndarray:
    """uint8 (h, 4 w, 3) sheet from sRGB ``plate`` (H, W, 3), ``alpha`` (H, W) and boolean masks (H, W)."""
    height = max(1, round(plate.shape[0] * tile_width / plate.shape[1]))
    small = _resize(plate, height, tile_width)
    matte = _resize(alpha, height, tile_width)[..., None]
    y, x = np.mgrid[0:height, 0:tile_width]
    checker = np.where(((y // CHECKER) + (x // CHECKER)) % 2 == 0, 0.8, 0.5)[..., None]
    overlay = small * 0.4
    overlay[..., 0] += 0.6 * _resize(band.astype(np.float32), height, tile_width)
    if changed is not None:
        overlay[..., 2] += 0.6 * _resize(changed.astype(np.float32), height, tile_width)
    tiles = [small, np.repeat(matte, 3, axis=2), matte * small + (1 - matte) * checker, overlay]
    return np.round(np.clip(np.concatenate(tiles, axis=1), 0, 1) * 255).astype(np.uint8)


def run_preview(args) -> int:
    """Matte the frame (after its predecessor, when there is one, for the temporal mask) and draw it."""
    import torch

    from .imageio import ImageReadError, read_alpha, read_rgb, write_rgb8
    from .loading import ModelLoadError, load_matter
    from .sequence import SequenceError, select_frames
    from .validation import FrameError

    if not args.checkpoint and not args.prior:
        raise UsageError(NEEDS_A_SOURCE)
    source, prior = plates(args)
    if args.frame is not None and not source.is_sequence:
        raise UsageError(f"--frame needs a sequence pattern, not the single file '{source.text}'")
    try:
        frame = args.frame if args.frame is not None else select_frames(source, None)[0]
    except SequenceError as exc:
        raise UsageError(str(exc)) from exc
    # Frame 0 and a single image have no previous frame; a missing one is a sequence's first.
    previous = frame - 1 if frame is not None and frame > 0 and os.path.exists(source.path(frame - 1)) else None
    reads = [frame] if previous is None else [previous, frame]
    refuse_overwriting([args.output],
                       [patterns.path(number) for patterns in (source, prior) if patterns is not None for number in reads])
    try:
        matter = load_matter(args.checkpoint, args.device)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc

    def matte(number, state=None):
        pixels = torch.from_numpy(read_rgb(source.path(number), args.colourspace))
        coarse = None if prior is None else torch.from_numpy(read_alpha(prior.path(number)))
        return (pixels, *matter.matte(pixels, state, prior=coarse))

    state = None
    if previous is not None:
        try:
            state = matte(previous)[2]
        except (ImageReadError, OSError, FrameError) as exc:  # it only adds the changed pixels: do without
            print(f"sparsemat: note: no changed pixels (blue) from frame {previous}: {exc}", file=sys.stderr)
    try:
        pixels, alpha, _, stats = matte(frame, state)
    except (ImageReadError, OSError, FrameError) as exc:
        raise UsageError(str(exc)) from exc
    changed = None if stats.masks.changed is None else stats.masks.changed[0, 0].cpu().numpy() > 0
    sheet = contact_sheet(np.clip(pixels.numpy(), 0.0, 1.0), alpha.cpu().numpy(),
                          stats.masks.refine[0, 0].cpu().numpy() > 0, changed, tile_width=args.width)
    try:
        write_rgb8(args.output, sheet)
    except OSError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.output}: plate | alpha | composite | refined band (red), changed (blue); "
          f"active {stats.active_fraction:.2%}")
    return 0
