"""The engine wire protocol's constants and framing (docs/PROTOCOL.md); numpy and msgpack only."""
from __future__ import annotations

import math
import sys

import msgpack
import numpy as np

VERSION = 1  # the major version every header carries as "v": a change here breaks clients
MINOR = 2  # what this engine adds within VERSION (docs/PROTOCOL.md, "Versions"); hello reports it
OPERATIONS = ("hello", "matte", "reset", "status", "shutdown")
DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16, "float32": np.float32}
ALPHA_DTYPES = ("float16", "float32")
TRANSPORTS = ("inline", "shm", "file")
MAX_HEADER_BYTES = 65536
MAX_MESSAGE_BYTES = 2 << 30  # per ZeroMQ message; an 8K RGBA float32 frame is 531 MB
# The "shm" transport needs /dev/shm, where the engine identifies blocks: Linux only.
SHARED_MEMORY = sys.platform.startswith("linux")


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is one of the documented error codes."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def pack(header: dict) -> bytes:
    return msgpack.packb({"v": VERSION, **header}, use_bin_type=True)


def unpack(frame: bytes) -> dict:
    """A header frame as a dict; ProtocolError when it is not a MessagePack map."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {len(frame)} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("bad_message", f"header is not MessagePack ({type(exc).__name__})") from exc
    if not isinstance(header, dict):
        raise ProtocolError("bad_message", f"header is a MessagePack {type(header).__name__}, not a map")
    return header


def pixel_nbytes(shape, dtype: str) -> int:
    # math.prod, not numpy's: this runs on every request, and np.prod of a short list costs
    # tens of microseconds when the engine wakes from a frame's compute with cold caches.
    return math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
