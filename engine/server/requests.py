"""Reading requests: every field checked before any work (docs/PROTOCOL.md), and the pixels of a
checked request decoded from wherever they travelled (message, shared memory, file)."""
from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from sparsemat.plugin import protocol
from sparsemat.plugin.protocol import ProtocolError

from ..imageio import ImageReadError, display_rgb, read_alpha, read_plate, read_rgb, srgb_decode
from ..validation import MAX_TRIMAP_DILATION, MIN_PIXELS, frame_size_problem
from .blocks import SharedMemoryBlocks

# A POSIX shared-memory name as the Python client makes them: one name in /dev/shm, no path.
_SHM_NAME = re.compile(r"/?[A-Za-z0-9_.-]{1,200}")
MAX_STREAM_CHARS = 1024


@dataclass(frozen=True)
class Policy:
    """What the engine lets requests reach: shared memory only on an ipc address (a client on
    this machine), files only when they are regular files, under ``file_roots`` when given."""

    shared_memory: bool = True
    file_roots: tuple[str, ...] = ()


def require(header: dict, field: str, kind, default=None, required: bool = True):
    """``header[field]`` of type ``kind`` (a bool is not an int); ``default`` when absent."""
    value = header.get(field, default)
    if value is None and not required:
        return None
    if value is None:
        raise ProtocolError("bad_request", f"'{field}' is required")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError("bad_request", f"'{field}' must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class PixelSource:
    """Where a request's pixels are: ``transport`` inline (``buffer``), shm (``shm``) or file (``path``)."""

    transport: str
    shape: list | None = None
    dtype: str | None = None
    nbytes: int = 0
    buffer: object = None
    shm: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class MatteRequest:
    stream: str
    frame: int
    image: PixelSource
    prior: PixelSource | None
    trimap: PixelSource | None
    trimap_dilation: int
    clean_plate: PixelSource | None
    foreground: bool
    foreground_colours: PixelSource | None
    colourspace: str | None
    temporal: bool
    keyframe_interval: int
    alpha_dtype: str
    max_pixels: int | None
    alpha_shm_offset: int | None


def parse_matte(header: dict, frames: list, policy: Policy) -> MatteRequest:
    stream = require(header, "stream", str)
    if not 0 < len(stream) <= MAX_STREAM_CHARS:
        raise ProtocolError("bad_request", f"'stream' must be 1 to {MAX_STREAM_CHARS} characters")
    colourspace = require(header, "colourspace", str, required=False)
    if colourspace is not None and not colourspace.strip():
        raise ProtocolError("bad_request", "'colourspace' must name a colourspace (or be left out)")
    alpha_dtype = require(header, "alpha_dtype", str, default="float32")
    if alpha_dtype not in protocol.ALPHA_DTYPES:
        raise ProtocolError("bad_request", f"'alpha_dtype' must be one of {', '.join(protocol.ALPHA_DTYPES)}")
    max_pixels = require(header, "max_pixels", int, required=False)
    if max_pixels is not None and max_pixels < MIN_PIXELS:
        raise ProtocolError("bad_request", f"'max_pixels' must be at least {MIN_PIXELS}")
    keyframe_interval = require(header, "keyframe_interval", int, default=0)
    if keyframe_interval < 0:
        raise ProtocolError("bad_request", "'keyframe_interval' must be 0 or more")
    frame = require(header, "frame", int)
    temporal = require(header, "temporal", bool, default=True)
    image = pixel_source(require(header, "image", dict), frames, "image", (1, 3, 4), policy)
    alpha_shm_offset = require(header, "alpha_shm_offset", int, required=False)
    if alpha_shm_offset is not None:
        itemsize = np.dtype(protocol.DTYPES[alpha_dtype]).itemsize
        if image.transport != "shm" or alpha_shm_offset < image.nbytes or alpha_shm_offset % itemsize:
            raise ProtocolError("bad_request", f"'alpha_shm_offset' needs the image in shared memory, must not "
                                               f"overlap its pixels, and must be a multiple of {itemsize}")
    foreground = require(header, "foreground", bool, default=False)
    colours = require(header, "foreground_colours", dict, required=False)
    if colours is not None and (not foreground or colours.get("transport") == "file"):
        raise ProtocolError("bad_request", "'foreground_colours' goes with 'foreground': true, inline or through shm")
    trimap_dilation = require(header, "trimap_dilation", int, default=0)
    if not 0 <= trimap_dilation <= MAX_TRIMAP_DILATION:
        raise ProtocolError("bad_request", f"'trimap_dilation' must be 0 to {MAX_TRIMAP_DILATION}")
    prior, trimap, clean_plate = (require(header, name, dict, required=False)
                                  for name in ("prior", "trimap", "clean_plate"))
    if prior is not None and clean_plate is not None:
        raise ProtocolError("bad_request", "'prior' and 'clean_plate' both replace the network's prior: send one")
    return MatteRequest(
        stream=stream, frame=frame, image=image,
        prior=None if prior is None else pixel_source(prior, frames, "prior", (1,), policy),
        trimap=None if trimap is None else pixel_source(trimap, frames, "trimap", (1,), policy),
        trimap_dilation=trimap_dilation, foreground=foreground,
        foreground_colours=None if colours is None else pixel_source(colours, frames, "foreground_colours", (3,), policy),
        clean_plate=None if clean_plate is None else pixel_source(clean_plate, frames, "clean_plate", (1, 3, 4), policy),
        colourspace=colourspace, temporal=temporal, keyframe_interval=keyframe_interval,
        alpha_dtype=alpha_dtype, max_pixels=max_pixels, alpha_shm_offset=alpha_shm_offset)


def pixel_source(block: dict, frames: list, name: str, channels: tuple, policy: Policy) -> PixelSource:
    """A pixel block, checked; inline bytes are checked against the shape here, at once."""
    transport = block.get("transport", "inline")
    if transport not in protocol.TRANSPORTS:
        raise ProtocolError("bad_request", f"{name}: 'transport' must be one of {', '.join(protocol.TRANSPORTS)}")
    if transport == "file":
        path = require(block, "path", str)
        if "\0" in path or not os.path.isabs(path):
            raise ProtocolError("bad_request", f"{name}: 'path' must be an absolute path, without NUL characters")
        return PixelSource("file", path=path)
    shape, dtype = block.get("shape"), block.get("dtype")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
            or shape[2] not in channels):
        raise ProtocolError("bad_request", f"{name}: 'shape' must be [H, W, C] with C in {channels}, got {shape!r}")
    problem = frame_size_problem(shape[1], shape[0], "frame" if name == "image" else name)
    if problem:
        raise ProtocolError("bad_pixels" if name == "image" else "bad_request", f"{name}: {problem}")
    if dtype not in protocol.DTYPES:
        raise ProtocolError("bad_request", f"{name}: 'dtype' must be one of {', '.join(protocol.DTYPES)}, got {dtype!r}")
    expected = protocol.pixel_nbytes(shape, dtype)
    if transport == "shm":
        if not policy.shared_memory:
            raise ProtocolError("bad_request", f"{name}: shared memory needs a client on this machine, through an "
                                               f"ipc:// address; this engine serves tcp: send pixels inline")
        shm = require(block, "shm", str)
        if not _SHM_NAME.fullmatch(shm) or shm.lstrip("/") in (".", ".."):
            raise ProtocolError("bad_request", f"{name}: 'shm' must be a shared-memory block's name, not a path")
        return PixelSource("shm", shape, dtype, expected, shm=shm)
    index = block.get("frame", 1)
    if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index < len(frames):
        raise ProtocolError("bad_request", f"{name}: payload frame {index!r} is missing")
    buffer = frames[index].buffer
    if buffer.nbytes != expected:
        raise ProtocolError("size_mismatch", f"{name}: {buffer.nbytes} bytes sent, but shape {shape} of {dtype} "
                                             f"needs {expected}")
    return PixelSource("inline", shape, dtype, expected, buffer=buffer)


def readable_file(path: str, policy: Policy) -> str:
    """``path`` if the engine may read it: a regular file (no FIFO, device or folder, which could
    hang or mislead the engine; checked by ``stat`` before anything opens it), under one of the
    policy's folders when it names any (symbolic links resolved first). Every refusal, a missing
    file's too, reads the same, so a request cannot probe what exists."""
    try:
        real = os.path.realpath(path)
        allowed = not policy.file_roots or any(os.path.commonpath([real, root]) == root for root in policy.file_roots)
        regular = allowed and stat.S_ISREG(os.stat(real).st_mode) and os.access(real, os.R_OK)
    except (OSError, ValueError):
        regular = False
    if not regular:
        raise ProtocolError("bad_pixels", f"cannot read '{path}': not a readable regular file"
                                          + (" under the engine's allowed folders" if policy.file_roots else ""))
    return real


def raw_pixels(source: PixelSource, blocks: SharedMemoryBlocks) -> np.ndarray:
    """The block's pixels as float32 (H, W, 1 or 3). Float32 pixels are a view of the message or
    shared-memory buffer, not a copy: the engine only reads them, and only while it answers
    this request. Other types take one converting pass, integers scaled to [0, 1]."""
    height, width, channels = source.shape
    dtype = protocol.DTYPES[source.dtype]

    def convert(buffer) -> np.ndarray:
        raw = np.frombuffer(buffer, dtype=dtype, count=height * width * channels).reshape(height, width, channels)
        raw = raw[..., : min(channels, 3)]  # an alpha channel is ignored
        if dtype == np.float32:
            return raw
        pixels = np.empty(raw.shape, np.float32)
        np.copyto(pixels, raw, casting="unsafe")
        if np.issubdtype(dtype, np.integer):
            pixels *= np.float32(1.0 / np.iinfo(dtype).max)
        return pixels

    if source.transport == "inline":
        return convert(source.buffer)
    return blocks.read(source.shm, source.nbytes, convert)


def load_image(source: PixelSource, colourspace: str | None, blocks: SharedMemoryBlocks, policy: Policy
               ) -> np.ndarray:
    """(H, W, 3) float32 display-encoded RGB. sRGB pixels are passed on as they are (a view, for
    float32): Matter clips them and rejects NaN/infinity as it normalizes, in passes it makes anyway.
    A file without a colourspace is read by its type (linear EXR, sRGB otherwise), as
    ``sparsemat matte`` reads it; pixels in memory default to sRGB."""
    with _pixel_errors():
        if source.transport == "file":
            return read_rgb(readable_file(source.path, policy), colourspace)
        pixels = raw_pixels(source, blocks)
        colourspace = colourspace or "srgb"
        if colourspace.lower() == "srgb" and pixels.shape[2] == 3:
            return pixels
        # display_rgb works in place: never in the client's buffer.
        return display_rgb(pixels if pixels.flags.owndata else pixels.copy(), colourspace)


def load_plate(source: PixelSource, colourspace: str | None, blocks: SharedMemoryBlocks, policy: Policy
               ) -> tuple[np.ndarray, np.ndarray]:
    """``load_image``'s pixels and the plate's own colours (H, W, 3) float32 for its foreground, as
    ``read_plate`` gives a file's: sRGB decoded to linear light, any other colourspace as sent."""
    with _pixel_errors():
        if source.transport == "file":
            return read_plate(readable_file(source.path, policy), colourspace)
        pixels = raw_pixels(source, blocks)
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        colourspace = colourspace or "srgb"
        display = display_rgb(pixels.copy(), colourspace)  # checks for NaN and infinity first
        own = srgb_decode(np.clip(pixels, 0.0, 1.0)) if colourspace.lower() == "srgb" else pixels.copy()
        return display, np.ascontiguousarray(own, dtype=np.float32)


@contextmanager
def _pixel_errors():
    """Reading pixels' failures as the protocol's errors."""
    try:
        yield
    except ImageReadError as exc:
        raise ProtocolError("bad_pixels", str(exc)) from exc
    except ProtocolError:  # a ValueError too, with its own code
        raise
    except ValueError as exc:  # an unknown colourspace
        raise ProtocolError("bad_request", str(exc)) from exc


def load_guide(source: PixelSource, blocks: SharedMemoryBlocks, policy: Policy) -> np.ndarray:
    """A prior or a trimap: one channel. Matter checks its values (NaN or infinity); a file's are
    checked as it is read.
    Float32 pixels are a view, as the image's are: Matter reads them once, into a clipped copy."""
    if source.transport != "file":
        return raw_pixels(source, blocks)[..., 0]
    try:
        return read_alpha(readable_file(source.path, policy))
    except ImageReadError as exc:
        raise ProtocolError("bad_pixels", str(exc)) from exc
