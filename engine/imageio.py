"""Reading plate frames and writing alpha mattes through OpenImageIO (no torch).

``read_rgb`` returns what the matting model expects: float32 (H, W, 3), sRGB-encoded,
in [0, 1], all finite (NaN and infinity are refused naming the file and the first bad
pixel). Scene-linear plates (EXR, HDR) are encoded with the sRGB transfer function;
other colourspaces go through OpenColorIO. ``write_alpha`` writes one-channel mattes
atomically, so an interrupted run never leaves a half-written frame behind.

OpenImageIO rules this module keeps (breaking them crashed or corrupted data here):
one-channel pixels are passed as (H, W, 1), never (H, W); pixels are always read as a
concrete type (``oiio.FLOAT``), never ``oiio.UNKNOWN``; the matte channel is named "A"
explicitly, since OpenImageIO otherwise calls a lone channel "Y"; and a read is only
trusted when it returned pixels *and* left no error behind (a truncated JPEG returns
pixels and only reports the damage through ``has_error``).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np
import OpenImageIO as oiio
import PyOpenColorIO as ocio

from sparsemat.plugin.files import in_display_window, replacing

from .validation import all_finite, frame_size_problem, non_finite_values

SUPPORTED_OUTPUTS = (".exr", ".png", ".tif", ".tiff")

# Extensions whose pixels are scene-linear by convention; everything else is display-encoded.
LINEAR_EXTENSIONS = (".exr", ".hdr")

# Names of the sRGB-encoded Rec.709 colourspace in common OCIO configs, tried in order.
SRGB_COLOURSPACE_NAMES = (
    "sRGB Encoded Rec.709 (sRGB)",
    "sRGB - Texture",
    "srgb_tx",
    "Utility - sRGB - Texture",
    "sRGB",
)
BUILTIN_OCIO_CONFIG = "ocio://default"
# A missing file (config or LUT) raises ExceptionMissingFile, which is not an ocio.Exception.
_OCIO_ERRORS = (ocio.Exception, ocio.ExceptionMissingFile)


class ImageReadError(ValueError):
    """A frame could not be read, or its pixels are unusable."""


class ImageWriteError(OSError):
    """A matte could not be written."""


def read_rgb(path: str, colourspace: str | None = None) -> np.ndarray:
    """float32 (H, W, 3) sRGB-encoded pixels in [0, 1], C-contiguous.

    ``colourspace`` names how the file's pixels are encoded: "srgb" (used as they are,
    clipped to [0, 1]), "linear" (scene-linear Rec.709, clipped, then encoded with the sRGB
    curve) or any colourspace of the OCIO config ($OCIO, else the built-in one). By default EXR and HDR files are "linear"
    and everything else "srgb". Gray images are replicated to three channels; alpha is ignored.
    """
    # Resolved before reading, so a bad name fails at once rather than after a slow read.
    encode = _display_encoder(_colourspace_of(path, colourspace))
    return _to_display_rgb(path, _read_channels(path, _colour_channels), encode)


def read_plate(path: str, colourspace: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``read_rgb``'s pixels, and the file's own colours (H, W, 3) float32 for unmixing the
    foreground, in one read: an sRGB file's decoded to linear light, any other colourspace's as
    stored (an EXR's scene-linear values, highlights over 1 included)."""
    colourspace = _colourspace_of(path, colourspace)
    encode = _display_encoder(colourspace)
    raw = _read_channels(path, _colour_channels)
    if raw.shape[2] == 1:
        raw = np.repeat(raw, 3, axis=2)
    check_finite(path, raw)
    own = srgb_decode(np.clip(raw, 0.0, 1.0)) if colourspace.lower() == "srgb" else raw.copy()
    return _to_display_rgb(path, raw, encode), np.ascontiguousarray(own, dtype=np.float32)


def _colourspace_of(path: str, colourspace: str | None) -> str:
    if colourspace is None:
        return "linear" if os.path.splitext(path)[1].lower() in LINEAR_EXTENSIONS else "srgb"
    return colourspace


def display_rgb(pixels: np.ndarray, colourspace: str = "srgb") -> np.ndarray:
    """C-contiguous float32 (H, W, 1 or 3) pixels in memory -> what ``read_rgb`` returns: (H, W, 3)
    sRGB-encoded in [0, 1]. Works in place where it can: pass an array this call may change.
    Raises ImageReadError on NaN/inf."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.dtype != np.float32:
        raise ValueError(f"pixels must be float32 (H, W, 1|3), got {pixels.dtype} {pixels.shape}")
    return _to_display_rgb("pixels", pixels, _display_encoder(colourspace))


def _to_display_rgb(name: str, pixels: np.ndarray, encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    check_finite(name, pixels)
    return np.ascontiguousarray(encode(pixels), dtype=np.float32)


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of a file's display window, from its header alone; None when it cannot be
    opened (reading it says why)."""
    image = oiio.ImageInput.open(path)
    if image is None:
        oiio.geterror()  # read, so that the error is not reported again with the next one
        return None
    try:
        spec = image.spec()
        return spec.full_width, spec.full_height
    finally:
        image.close()


def read_alpha(path: str) -> np.ndarray:
    """float32 (H, W) matte: the channel named "A", else the first channel; all values finite."""
    return read_matte(path)[0]


def read_matte(path: str) -> tuple[np.ndarray, int | None]:
    """``read_alpha``'s matte, and the largest value of the file's integer format (255 for 8-bit,
    65535 for 16-bit; None for a float file), for code that needs the stored integers exactly
    (``round(alpha * maximum)`` is each one)."""
    maximum = []
    alpha = _read_channels(path, _alpha_channel, maximum)[..., 0]
    check_finite(path, alpha)
    return alpha, maximum[0]


def write_alpha(path: str, alpha: np.ndarray, half: bool = False) -> None:
    """Write an (H, W) matte, picking the format from the extension.

    EXR: one float channel named "A" (half floats when ``half``), zip compressed.
    PNG and TIFF: 16-bit, values clipped to [0, 1]. The file is written next to its final
    name and renamed onto it, so readers never see a partial frame. The folder must exist.
    """
    extension = os.path.splitext(path)[1]
    if extension.lower() not in SUPPORTED_OUTPUTS:
        raise ValueError(
            f"cannot write '{path}': unsupported extension '{extension}' "
            f"(supported: {', '.join(SUPPORTED_OUTPUTS)})"
        )
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim != 2:
        raise ValueError(f"cannot write '{path}': alpha must be 2-D (H, W), got shape {alpha.shape}")
    if not np.isfinite(alpha).all():
        raise ValueError(f"cannot write '{path}': alpha contains NaN or infinite values")
    _write_atomically(path, *_alpha_image(alpha, extension.lower(), half))


def write_rgba(path: str, pixels: np.ndarray, half: bool = False) -> None:
    """Write (H, W, 4) float pixels (a premultiplied foreground) as an EXR with channels R, G, B, A,
    zip compressed (half floats when ``half``), atomically."""
    if os.path.splitext(path)[1].lower() != ".exr":
        raise ValueError(f"cannot write '{path}': a foreground is written as EXR")
    height, width, channels = pixels.shape
    spec = oiio.ImageSpec(width, height, channels, oiio.HALF if half else oiio.FLOAT)
    spec.attribute("compression", "zip")
    spec.channelnames = ("R", "G", "B", "A")
    spec.alpha_channel = 3
    _write_atomically(path, spec, np.ascontiguousarray(pixels, dtype=np.float32))


def write_rgb8(path: str, pixels: np.ndarray) -> None:
    """Write (H, W, 3) uint8 pixels (a preview, say) in the format of the extension, atomically."""
    height, width, channels = pixels.shape
    _write_atomically(path, oiio.ImageSpec(width, height, channels, oiio.UINT8), np.ascontiguousarray(pixels))


def draw_text(pixels: np.ndarray, x: int, y: int, text: str, size: int = 16) -> np.ndarray:
    """``pixels`` (H, W, 3) float32 with ``text`` drawn in white, its baseline at ``y``, with
    OpenImageIO's own font (a preview's labels)."""
    buffer = oiio.ImageBuf(np.ascontiguousarray(pixels, dtype=np.float32))
    oiio.ImageBufAlgo.render_text(buffer, x, y, text, size, "", (1.0, 1.0, 1.0))
    return buffer.get_pixels(oiio.FLOAT).reshape(pixels.shape)


def _write_atomically(path: str, spec: oiio.ImageSpec, pixels: np.ndarray) -> None:
    """Write next to the final name, then rename onto it: readers never see a partial file."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ImageWriteError(f"cannot write '{path}': folder '{folder}' does not exist")
    try:
        with replacing(path) as temporary:
            _write_image(temporary, spec, pixels, path, folder)
    except ImageWriteError:
        raise
    except OSError as error:
        raise ImageWriteError(f"cannot write '{path}': {error.strerror or error}") from error


_INTEGER_MAXIMA = {"uint8": 255, "uint16": 65535}


def _read_channels(path: str, choose: Callable[[oiio.ImageSpec], list[int]], maximum: list | None = None
                   ) -> np.ndarray:
    """C-contiguous float32 (H, W, C) of the chosen channels over the display window; the file's
    integer maximum (or None) is appended to ``maximum`` when given."""
    # Keep stored colour values of straight-alpha files (PNG, TIFF) instead of premultiplying.
    hints = oiio.ImageSpec()
    hints.attribute("oiio:UnassociatedAlpha", 1)
    image = oiio.ImageInput.open(path, hints)
    if image is None:
        raise ImageReadError(f"cannot read '{path}': {_first_line(oiio.geterror()) or 'unknown error'}")
    try:
        spec = image.spec()
        for width, height in ((spec.width, spec.height), (spec.full_width, spec.full_height)):
            problem = width > 0 and frame_size_problem(width, height, "image")  # before any pixel is decoded
            if problem:
                raise ImageReadError(f"cannot read '{path}': {problem}")
        channels = choose(spec)
        if maximum is not None:
            formats = list(spec.channelformats) or [spec.format] * spec.nchannels
            maximum.append(_INTEGER_MAXIMA.get(str(formats[channels[0]])))
        # Read only the span that holds the wanted channels: EXRs may carry many more.
        first = min(channels)
        pixels = image.read_image(0, 0, first, max(channels) + 1, oiio.FLOAT)
        if pixels is None or image.has_error:
            reason = _first_line(image.geterror()) or "the pixel data could not be read"
            raise ImageReadError(f"cannot read '{path}': {reason}")
    finally:
        image.close()
    # Picking channels by index yields a non-contiguous array; OCIO needs a packed one.
    pixels = np.ascontiguousarray(pixels[..., [channel - first for channel in channels]])
    # Compositing apps show the display window: mattes must match the frame, not an auto-crop.
    return in_display_window(pixels, (spec.x, spec.y, spec.width, spec.height),
                             (spec.full_x, spec.full_y, spec.full_width, spec.full_height))


def _colour_channels(spec: oiio.ImageSpec) -> list[int]:
    names = list(spec.channelnames)
    if all(name in names for name in "RGB"):
        return [names.index(name) for name in "RGB"]
    if spec.nchannels >= 3:
        return [0, 1, 2]
    # Gray, possibly with alpha: take the channel that is not the alpha.
    return [1 if spec.nchannels == 2 and spec.alpha_channel == 0 else 0]


def _alpha_channel(spec: oiio.ImageSpec) -> list[int]:
    names = list(spec.channelnames)
    return [names.index("A") if "A" in names else 0]


def check_finite(name: str, pixels: np.ndarray) -> None:
    """Raise ImageReadError naming the first NaN/infinite value of (H, W) or (H, W, C) ``pixels``."""
    if not all_finite(pixels):
        raise ImageReadError(f"'{name}' contains {non_finite_values(pixels)}")


def check_colourspace(colourspace: str) -> None:
    """ValueError, naming what is known, when frames of ``colourspace`` cannot be decoded."""
    _display_encoder(colourspace)


def _display_encoder(colourspace: str) -> Callable[[np.ndarray], np.ndarray]:
    """Function turning C-contiguous float32 (H, W, 3) pixels of ``colourspace`` into sRGB in [0, 1]."""
    key = colourspace.lower()
    if key == "srgb":
        return lambda pixels: np.clip(pixels, 0.0, 1.0, out=pixels)
    if key == "linear":
        return lambda pixels: srgb_encode(np.clip(pixels, 0.0, 1.0, out=pixels))
    processor = _ocio_processor(os.environ.get("OCIO") or BUILTIN_OCIO_CONFIG, colourspace)

    def encode(pixels: np.ndarray) -> np.ndarray:
        height, width, _ = pixels.shape
        processor.apply(ocio.PackedImageDesc(pixels, width, height, 3))  # in place
        return np.clip(pixels, 0.0, 1.0)

    return encode


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """The inverse of the sRGB transfer function, for values in [0, 1]."""
    return np.where(encoded <= 0.04045, encoded / 12.92, np.power((encoded + 0.055) / 1.055, 2.4))


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """The piecewise sRGB transfer function, for linear values in [0, 1]."""
    power = np.power(linear, 1 / 2.4)
    # 1.055 p - 0.055 rearranged: in float32 the textbook form maps 1.0 to 0.99999994, not white.
    return np.where(linear <= 0.0031308, 12.92 * linear, power + 0.055 * (power - 1.0))



@functools.cache
def _ocio_config(source: str) -> ocio.Config:
    try:
        return ocio.Config.CreateFromFile(source)
    except _OCIO_ERRORS as error:
        raise ValueError(f"cannot load OCIO config '{source}': {error}") from error


@functools.cache
def _ocio_processor(source: str, colourspace: str) -> ocio.CPUProcessor:
    """CPU processor from ``colourspace`` to sRGB-encoded Rec.709; cached, as building one is slow."""
    config = _ocio_config(source)
    if config.getColorSpace(colourspace) is None:
        raise ValueError(
            f"unknown colourspace '{colourspace}': use 'srgb', 'linear' or a colourspace "
            f"name from the OCIO config '{source}'"
        )
    target = next((name for name in SRGB_COLOURSPACE_NAMES if config.getColorSpace(name) is not None), None)
    if target is None:
        raise ValueError(
            f"the OCIO config '{source}' has no sRGB-encoded Rec.709 colourspace "
            f"(tried {', '.join(repr(name) for name in SRGB_COLOURSPACE_NAMES)})"
        )
    try:
        return config.getProcessor(colourspace, target).getDefaultCPUProcessor()
    except _OCIO_ERRORS as error:
        raise ValueError(
            f"cannot convert colourspace '{colourspace}' to '{target}' "
            f"with the OCIO config '{source}': {error}"
        ) from error


def _alpha_image(alpha: np.ndarray, extension: str, half: bool) -> tuple[oiio.ImageSpec, np.ndarray]:
    """Spec and (H, W, 1) pixels for a matte; (H, W) pixels are misread by OIIO."""
    height, width = alpha.shape
    if extension == ".exr":
        spec = oiio.ImageSpec(width, height, 1, oiio.HALF if half else oiio.FLOAT)
        spec.attribute("compression", "zip")
        spec.alpha_channel = 0
        pixels = alpha
    else:
        spec = oiio.ImageSpec(width, height, 1, oiio.UINT16)
        # Quantise here so the rounding is ours, not the writer's.
        pixels = np.round(np.clip(alpha, 0.0, 1.0) * 65535.0).astype(np.uint16)
    spec.channelnames = ("A",)
    return spec, np.ascontiguousarray(pixels[..., np.newaxis])


def _write_image(
    temporary: str, spec: oiio.ImageSpec, pixels: np.ndarray, path: str, folder: str
) -> None:
    output = oiio.ImageOutput.create(temporary)
    if output is None:
        raise ImageWriteError(f"cannot write '{path}': {_first_line(oiio.geterror()) or 'no writer for this format'}")
    # Trust return values only: the TIFF writer reports a spurious Exif error on success.
    written = output.open(temporary, spec) and output.write_image(pixels)
    closed = output.close()
    if not (written and closed):
        reason = _first_line(output.geterror()) or "unknown error"
        raise ImageWriteError(f"cannot write '{path}' in folder '{folder}': {reason}")


def _first_line(error: str) -> str:
    """OpenImageIO's error text can hold the same failure three times, one per library layer."""
    return (error or "").strip().split("\n")[0]
