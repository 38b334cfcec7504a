"""``sparsemat preview``: a PNG contact sheet of one frame, for people who would rather look.

Four labelled tiles in a 2 x 2 grid: the plate; the alpha; the foreground (unmixed from the
background where the alpha is partial, ``foreground.py``) over a checkerboard; the plate dimmed, with the refined pixels in red and, when
a previous frame exists, the changed (temporal) pixels in blue. A legend line at the
bottom says what the colours mean and what was refined. ``--crop X,Y,W,H`` shows one
region of the frame instead, magnified with square pixels when it is smaller than a
tile, so hair can be judged pixel by pixel.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .inputs import NEEDS_A_SOURCE, plates, refuse_overwriting
from .validation import EXIT_FAILED, UsageError

CHECKER = 16  # checkerboard square, in tile pixels
CAPTION = 26  # height of a tile's caption strip, in sheet pixels
LEGEND = 34  # height of the legend strip at the bottom
TEXT_SIZE = 16


def crop_box(text: str) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` in frame pixels (origin at the top left) for ``--crop``."""
    try:
        x, y, width, height = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in pixels (such as 600,200,320,180), got {text}") from None
    if x < 0 or y < 0 or width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"--crop needs X and Y of 0 or more and a width and height over 0: {text}")
    return x, y, width, height


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaged when shrinking; square pixels (nearest) when magnifying a crop."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    mode = "area" if width <= image.shape[1] else "nearest"
    out = F.interpolate(tensor, size=(height, width), mode=mode)[0]
    return out[0].numpy() if image.ndim == 2 else out.permute(1, 2, 0).numpy()


def contact_sheet(plate: np.ndarray, foreground: np.ndarray, alpha: np.ndarray, band: np.ndarray,
                  changed: np.ndarray | None, tile_width: int = 960, crop: tuple[int, int, int, int] | None = None,
                  legend: str = "", title: str = "plate") -> np.ndarray:
    """uint8 (H', 2 w, 3) sheet from sRGB ``plate`` and ``foreground`` (H, W, 3) in [0, 1], ``alpha``
    (H, W) and boolean masks (H, W), of the ``crop`` (x, y, w, h) region when given, each tile
    captioned."""
    from .imageio import draw_text

    if crop is not None:
        x, y, width, height = crop
        window = (slice(y, y + height), slice(x, x + width))
        plate, foreground, alpha, band = plate[window], foreground[window], alpha[window], band[window]
        changed = None if changed is None else changed[window]
    height = max(1, round(plate.shape[0] * tile_width / plate.shape[1]))
    small = _resize(plate, height, tile_width)
    matte = _resize(alpha, height, tile_width)[..., None]
    rows, columns = np.mgrid[0:height, 0:tile_width]
    checker = np.where(((rows // CHECKER) + (columns // CHECKER)) % 2 == 0, 0.8, 0.5)[..., None]
    overlay = small * 0.4
    overlay[..., 0] += 0.6 * _resize(band.astype(np.float32), height, tile_width)
    if changed is not None:
        overlay[..., 2] += 0.6 * _resize(changed.astype(np.float32), height, tile_width)
    tiles = [(small, title), (np.repeat(matte, 3, axis=2), "alpha"),
             (matte * _resize(foreground, height, tile_width) + (1 - matte) * checker, "foreground over a checkerboard"),
             (overlay, "refined (red)" + (", changed since the previous frame (blue)" if changed is not None else ""))]
    captioned = []
    for pixels, caption in tiles:
        strip = draw_text(np.full((CAPTION, tile_width, 3), 0.12, np.float32), 8, CAPTION - 8, caption, TEXT_SIZE)
        captioned.append(np.concatenate([strip, np.clip(pixels, 0, 1)], axis=0))
    grid = np.concatenate([np.concatenate(captioned[:2], axis=1), np.concatenate(captioned[2:], axis=1)], axis=0)
    footer = draw_text(np.full((LEGEND, grid.shape[1], 3), 0.12, np.float32), 8, LEGEND - 11, legend, TEXT_SIZE)
    return np.round(np.clip(np.concatenate([grid, footer], axis=0), 0, 1) * 255).astype(np.uint8)


def run_preview(args) -> int:
    """Matte the frame (after its predecessor, when there is one, for the temporal mask) and draw it."""
    import torch

    from .foreground import foreground_colours
    from .imageio import ImageReadError, read_alpha, read_rgb, srgb_decode, srgb_encode, write_rgb8
    from .loading import ModelLoadError, load_matter
    from .sequence import SequenceError, select_frames
    from .validation import FrameError

    if not (args.checkpoint or args.prior or args.trimap or args.clean_plate):
        raise UsageError(NEEDS_A_SOURCE)
    source, prior, trimap, clean_plate = plates(args)
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
                       [patterns.path(number) for patterns in (source, prior, trimap, clean_plate)
                        if patterns is not None for number in reads])
    try:
        matter = load_matter(args.checkpoint, args.device)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc

    def matte(number, state=None):
        pixels = torch.from_numpy(read_rgb(source.path(number), args.colourspace))
        coarse, known = (None if guide is None else torch.from_numpy(read_alpha(guide.path(number)))
                         for guide in (prior, trimap))
        plate = None if clean_plate is None else torch.from_numpy(read_rgb(clean_plate.path(number), args.colourspace))
        return (pixels, *matter.matte(pixels, state, prior=coarse, trimap=known, trimap_dilation=args.trimap_dilation,
                                      clean_plate=plate))

    state = None
    no_changed = f"frame {frame} has no previous frame here: no changed pixels (blue)"
    if previous is not None:
        try:
            state = matte(previous)[2]
        except (ImageReadError, OSError, FrameError) as exc:  # it only adds the changed pixels: do without
            no_changed = f"no changed pixels (blue) from frame {previous}: {exc}"
    if state is None:
        print(f"sparsemat: note: {no_changed}", file=sys.stderr)
    try:
        pixels, alpha, _, stats = matte(frame, state)
    except (ImageReadError, OSError, FrameError) as exc:
        raise UsageError(str(exc)) from exc
    if args.crop is not None:
        x, y, width, height = args.crop
        if x + width > stats.width or y + height > stats.height:
            raise UsageError(f"--crop {x},{y},{width},{height} reaches past the frame, which is "
                             f"{stats.width}x{stats.height}")
    changed = None if stats.masks.changed is None else stats.masks.changed[0, 0].cpu().numpy() > 0
    where = "" if frame is None else f"frame {frame}: "
    legend = (f"{where}{stats.active_fraction:.2%} of the frame refined (red)"
              + ("; blue: changed since the previous frame" if changed is not None else f"; {no_changed}")
              + ("" if args.crop is None else f"; crop {args.crop[2]}x{args.crop[3]} at {args.crop[0]},{args.crop[1]}"))
    title = "plate" + ("" if frame is None else f" (frame {frame})")
    shown = np.clip(pixels.numpy(), 0.0, 1.0)
    colours = foreground_colours(torch.from_numpy(srgb_decode(shown)), alpha.cpu())
    foreground = np.clip(srgb_encode(np.clip(colours.numpy(), 0.0, 1.0)), 0.0, 1.0)
    sheet = contact_sheet(shown, foreground, alpha.cpu().numpy(),
                          stats.masks.refine[0, 0].cpu().numpy() > 0, changed, tile_width=args.width, crop=args.crop,
                          legend=legend, title=title)
    try:
        write_rgb8(args.output, sheet)
    except OSError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.output}: {legend}")
    return 0
