"""A minimal OpenEXR reader and writer in numpy and zlib, for the hosts' own Pythons.

Neither Nuke's nor Blender's Python has OpenImageIO or OpenEXR bindings, and a host
integration only ever handles two kinds of files, both of which it chooses itself: the
plate its host renders (scanline, half or float, uncompressed or zip) and the
single-channel alpha it writes back. This module covers exactly that much of the
format (OpenEXR 2, single part, scanline, compression NONE, ZIPS or ZIP; channel
types HALF, FLOAT, UINT) and refuses anything else with a clear ``ExrError``, so a
file written differently (tiled, PIZ, DWAA, multi-part, deep) is never misread.
When OpenImageIO is importable, ``read`` falls back to it for those files.

Layout reference: "The OpenEXR File Layout" (openexr.com), magic number, version
field, header attributes, line offset table, scanline chunks; ZIP = byte
interleave + delta predictor + zlib, as ImfZip.cpp does it.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from sparsemat.plugin.files import in_display_window, replacing

MAGIC = 20000630
NONE, ZIPS, ZIP = 0, 2, 3  # the compressions this module reads and writes
LINES_PER_CHUNK = {NONE: 1, ZIPS: 1, ZIP: 16}
COMPRESSION_NAMES = {0: "none", 1: "rle", 2: "zips", 3: "zip", 4: "piz", 5: "pxr24", 6: "b44", 7: "b44a",
                     8: "dwaa", 9: "dwab", 10: "htj2k256", 11: "htj2k32"}
UINT, HALF, FLOAT = 0, 1, 2
PIXEL_TYPES = {UINT: np.dtype("<u4"), HALF: np.dtype("<f2"), FLOAT: np.dtype("<f4")}
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000


class ExrError(ValueError):
    """The file is not an EXR this module can read, or is damaged."""


class ExrUnsupported(ExrError):
    """A valid EXR written in a way this module does not read (tiled, PIZ, DWAA, ...)."""


# ---- reading ---------------------------------------------------------------------------------------

def read_header(data: bytes, path: str = "EXR") -> tuple[dict, int]:
    """(attributes, offset just past the header). Values of the attributes the reader needs are decoded."""
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ExrError(f"'{path}' is not an OpenEXR file")
    flags = struct.unpack_from("<i", data, 4)[0]
    if flags & (_TILED | _DEEP | _MULTIPART):
        kind = "tiled" if flags & _TILED else "deep" if flags & _DEEP else "multi-part"
        raise ExrUnsupported(f"'{path}' is a {kind} EXR; only single-part scanline EXRs are supported here")
    pos, header = 8, {}
    try:
        while data[pos] != 0:
            name, pos = _cstring(data, pos)
            kind, pos = _cstring(data, pos)
            size = struct.unpack_from("<i", data, pos)[0]
            pos += 4
            value = data[pos : pos + size]
            if len(value) != size:
                raise ExrError(f"'{path}' is truncated (in the header)")
            pos += size
            header[name] = _decode_attribute(kind, value)
    except (IndexError, struct.error) as exc:
        raise ExrError(f"'{path}' is truncated (in the header)") from exc
    for required in ("channels", "compression", "dataWindow", "displayWindow"):
        if required not in header:
            raise ExrError(f"'{path}' has no '{required}' attribute")
    return header, pos + 1


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("utf-8", "replace"), end + 1


def _decode_attribute(kind: str, value: bytes):
    if kind == "chlist":
        channels, pos = [], 0
        while value[pos] != 0:
            name, pos = _cstring(value, pos)
            pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", value, pos)
            pos += 16
            channels.append((name, pixel_type, x_sampling, y_sampling))
        return channels
    if kind == "compression" or kind == "lineOrder":
        return value[0]
    if kind == "box2i":
        return struct.unpack("<4i", value)
    if kind == "int":
        return struct.unpack("<i", value)[0]
    if kind == "float":
        return struct.unpack("<f", value)[0]
    if kind == "string":
        return value.decode("utf-8", "replace")
    return value  # kept as bytes; not needed here


def read(path: str, channels: tuple[str, ...] | None = None) -> tuple[np.ndarray, list[str]]:
    """(H, W, C) pixels over the display window, and the channel names: float16 when the file
    stores every wanted channel as half (nothing to gain from widening them), else float32.

    ``channels``: the names wanted, in that order (missing ones raise ExrError); default all,
    in file order (alphabetical). Pixels outside the data window are 0; overscan is cropped.
    Falls back to OpenImageIO, when importable, for EXRs this reader does not handle.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ExrError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    try:
        return _read(data, path, channels)
    except ExrUnsupported as exc:
        return _read_with_openimageio(path, channels, exc)


def _read(data: bytes, path: str, wanted: tuple[str, ...] | None) -> tuple[np.ndarray, list[str]]:
    header, pos = read_header(data, path)
    compression = header["compression"]
    if compression not in LINES_PER_CHUNK:
        name = COMPRESSION_NAMES.get(compression, str(compression))
        raise ExrUnsupported(f"'{path}' uses {name} compression; only none, zips and zip are supported here")
    chlist = header["channels"]
    if any(x != 1 or y != 1 for _, _, x, y in chlist):
        raise ExrUnsupported(f"'{path}' has subsampled channels; only full-resolution channels are supported here")
    names = [name for name, *_ in chlist]
    wanted = tuple(names) if wanted is None else tuple(wanted)
    for name in wanted:
        if name not in names:
            raise ExrError(f"'{path}' has no channel '{name}' (it has {', '.join(names) or 'none'})")
    x0, y0, x1, y1 = header["dataWindow"]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    if width <= 0 or height <= 0:
        raise ExrError(f"'{path}' has an empty data window")
    # One scanline of the file: each channel's row in turn, in file (alphabetical) order.
    row = np.dtype([(f"c{i}", PIXEL_TYPES[kind], (width,)) for i, (_, kind, _, _) in enumerate(chlist)])
    lines = LINES_PER_CHUNK[compression]
    chunks = -(-height // lines)
    try:
        offsets = np.frombuffer(data, "<u8", chunks, pos)
    except ValueError as exc:
        raise ExrError(f"'{path}' is truncated (in the offset table)") from exc
    raw = np.empty(height, dtype=row)
    for offset in offsets:
        try:
            y, size = struct.unpack_from("<ii", data, int(offset))
        except struct.error as exc:
            raise ExrError(f"'{path}' is truncated (chunk at byte {offset})") from exc
        first = y - y0
        count = min(lines, height - first)
        if first < 0 or first >= height or count <= 0:
            raise ExrError(f"'{path}' has a chunk for line {y}, outside its data window")
        block = data[int(offset) + 8 : int(offset) + 8 + size]
        expected = count * row.itemsize
        if len(block) != size:
            raise ExrError(f"'{path}' is truncated (chunk for line {y})")
        if compression != NONE and size < expected:
            block = _unzip(block, expected, path)
        if len(block) != expected:
            raise ExrError(f"'{path}' has a chunk of {len(block)} bytes for line {y}, expected {expected}")
        raw[first : first + count] = np.frombuffer(block, row, count)
    kinds = {chlist[names.index(name)][1] for name in wanted}
    dtype = np.float16 if kinds == {HALF} else np.float32
    columns = [raw[f"c{names.index(name)}"].astype(dtype) for name in wanted]
    pixels = np.stack(columns, axis=-1) if columns else np.zeros((height, width, 0), dtype)
    return in_display_window(pixels, _window(header["dataWindow"]), _window(header["displayWindow"])), list(wanted)


def _unzip(block: bytes, expected: int, path: str) -> bytes:
    try:
        encoded = np.frombuffer(zlib.decompress(block), np.uint8)
    except zlib.error as exc:
        raise ExrError(f"'{path}' has a damaged zip chunk ({exc})") from exc
    if encoded.size != expected:
        raise ExrError(f"'{path}' has a zip chunk of {encoded.size} bytes, expected {expected}")
    # Undo the predictor: each byte is the previous one plus (stored - 128), modulo 256.
    deltas = encoded.astype(np.int64)
    deltas[1:] -= 128
    interleaved = (np.cumsum(deltas) & 0xFF).astype(np.uint8)
    # Undo the split: the first half holds the even bytes, the second the odd ones.
    out = np.empty(expected, np.uint8)
    half = (expected + 1) // 2
    out[0::2] = interleaved[:half]
    out[1::2] = interleaved[half:]
    return out.tobytes()


def _window(box) -> tuple[int, int, int, int]:
    """An EXR box2i (x0, y0, x1, y1), inclusive, as (x, y, width, height)."""
    x0, y0, x1, y1 = box
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def _read_with_openimageio(path: str, wanted, reason: ExrError) -> tuple[np.ndarray, list[str]]:
    try:
        import OpenImageIO as oiio
    except ImportError:
        raise ExrError(f"{reason} (install OpenImageIO in the host's Python to read other EXRs)") from None
    image = oiio.ImageInput.open(path)
    if image is None:
        raise ExrError(f"cannot read '{path}': {oiio.geterror()}")
    try:
        spec = image.spec()
        names = list(spec.channelnames)
        formats = list(spec.channelformats) or [spec.format] * spec.nchannels
        wanted = tuple(names) if wanted is None else tuple(wanted)
        for name in wanted:
            if name not in names:
                raise ExrError(f"'{path}' has no channel '{name}' (it has {', '.join(names)})")
        half = all(formats[names.index(name)] == oiio.HALF for name in wanted)
        pixels = image.read_image(0, 0, 0, spec.nchannels, oiio.HALF if half else oiio.FLOAT)
        if pixels is None or image.has_error:
            raise ExrError(f"cannot read '{path}': {image.geterror()}")
    finally:
        image.close()
    pixels = np.ascontiguousarray(pixels.reshape(spec.height, spec.width, -1)[..., [names.index(n) for n in wanted]])
    window = (spec.x, spec.y, spec.width, spec.height)
    return in_display_window(pixels, window, (spec.full_x, spec.full_y, spec.full_width, spec.full_height)), list(wanted)


# ---- writing ---------------------------------------------------------------------------------------

def write(path: str, pixels: np.ndarray, channels: tuple[str, ...] = ("A",), half: bool = False,
          compression: int = ZIP) -> None:
    """Write (H, W) or (H, W, C) pixels as a scanline EXR, atomically (temporary name, then rename).

    ``channels`` names the C channels (stored in alphabetical order, as EXR requires); values are
    stored as half or float. The folder must exist.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, count = pixels.shape
    if count != len(channels) or len(set(channels)) != count:
        raise ValueError(f"{count} channel(s) of pixels but names {channels}")
    if compression not in LINES_PER_CHUNK:
        raise ValueError(f"compression must be one of NONE, ZIPS, ZIP, got {compression}")
    kind = HALF if half else FLOAT
    dtype = PIXEL_TYPES[kind]
    order = sorted(range(count), key=lambda i: channels[i])
    # Rows of the file: per line, each channel's row in alphabetical order.
    rows = np.ascontiguousarray(pixels[..., order].transpose(0, 2, 1).astype(dtype))
    header = _header(width, height, [channels[i] for i in order], kind, compression)
    lines = LINES_PER_CHUNK[compression]
    chunks = []
    for first in range(0, height, lines):
        block = rows[first : first + lines].tobytes()
        if compression != NONE:
            packed = _zip(block)
            block = packed if len(packed) < len(block) else block  # as OpenEXR does: never larger
        chunks.append(struct.pack("<ii", first, len(block)) + block)
    table, offset = [], len(header) + 8 * len(chunks)
    for chunk in chunks:
        table.append(offset)
        offset += len(chunk)
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        handle.write(header)
        handle.write(struct.pack(f"<{len(table)}Q", *table))
        for chunk in chunks:
            handle.write(chunk)


def _zip(block: bytes) -> bytes:
    raw = np.frombuffer(block, np.uint8)
    interleaved = np.concatenate([raw[0::2], raw[1::2]]).astype(np.int16)
    encoded = interleaved.copy()
    encoded[1:] = (interleaved[1:] - interleaved[:-1] + 128) & 0xFF
    return zlib.compress(encoded.astype(np.uint8).tobytes(), 4)


def _attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _header(width: int, height: int, names: list[str], kind: int, compression: int) -> bytes:
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", kind, 0, 1, 1) for n in names) + b"\0"
    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    return b"".join([
        struct.pack("<ii", MAGIC, 2),
        _attribute("channels", "chlist", chlist),
        _attribute("compression", "compression", bytes([compression])),
        _attribute("dataWindow", "box2i", window),
        _attribute("displayWindow", "box2i", window),
        _attribute("lineOrder", "lineOrder", b"\0"),
        _attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _attribute("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
        _attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
        b"\0",
    ])
