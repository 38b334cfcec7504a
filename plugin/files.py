"""Files as the engine and the hosts both write and read them: numpy only.

``replacing`` writes a file atomically (a reader never sees a partial frame, an interrupted
write leaves nothing behind); ``in_display_window`` places an image's data window into its
display window, as compositing applications show a frame.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed when it raises. The temporary keeps ``path``'s extension (writers
    choose their format by it) and the same folder (so the rename is atomic). OSError when the
    rename fails."""
    folder, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{extension}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never written, or already gone: the first error matters
            os.remove(temporary)
        raise


def in_display_window(pixels: np.ndarray, data: tuple[int, int, int, int],
                      display: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, C) pixels of the data window placed into the display window; windows are
    ``(x, y, width, height)``. EXRs may store a smaller (auto-cropped) or larger (overscan) data
    window than the frame: what is missing is zero and overscan is cropped. The pixels
    themselves when the windows agree (or the display window is empty)."""
    x, y, width, height = data
    full_x, full_y, full_width, full_height = display
    if tuple(data) == tuple(display) or full_width <= 0 or full_height <= 0:
        return pixels
    frame = np.zeros((full_height, full_width, pixels.shape[2]), dtype=pixels.dtype)
    left, top = max(x, full_x), max(y, full_y)
    right, bottom = min(x + width, full_x + full_width), min(y + height, full_y + full_height)
    if left < right and top < bottom:
        frame[top - full_y:bottom - full_y, left - full_x:right - full_x] = pixels[top - y:bottom - y, left - x:right - x]
    return frame
