"""Reading frames and writing mattes with real files through OpenImageIO."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

from sparsemat.engine.imageio import (
    SUPPORTED_OUTPUTS,
    ImageReadError,
    ImageWriteError,
    read_alpha,
    read_rgb,
    write_alpha,
)

HEIGHT, WIDTH = 12, 16


def write_image(
    path: Path,
    pixels: np.ndarray,
    pixel_type: oiio.TypeDesc,
    channelnames: tuple[str, ...] | None = None,
    straight_alpha: bool = False,
) -> Path:
    """Write (H, W, C) pixels with OIIO as a test fixture, as another application would."""
    height, width, channels = pixels.shape
    spec = oiio.ImageSpec(width, height, channels, pixel_type)
    if channelnames:
        spec.channelnames = channelnames
    if straight_alpha:
        # Store colour as given instead of letting the writer un-premultiply it.
        spec.attribute("oiio:UnassociatedAlpha", 1)
    output = oiio.ImageOutput.create(str(path))
    assert output.open(str(path), spec), output.geterror()
    assert output.write_image(np.ascontiguousarray(pixels)), output.geterror()
    assert output.close()
    return path


def image_spec(path: Path) -> oiio.ImageSpec:
    image = oiio.ImageInput.open(str(path))
    assert image is not None, oiio.geterror()
    spec = image.spec()
    image.close()
    return spec


def srgb_formula(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear.astype(np.float64), 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def linear_rgb(rng: np.random.Generator) -> np.ndarray:
    """Scene-linear values including negatives and highlights above 1."""
    return rng.uniform(-0.2, 2.0, (HEIGHT, WIDTH, 3)).astype(np.float32)


def assert_frame(rgb: np.ndarray) -> None:
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    assert rgb.dtype == np.float32
    assert rgb.flags.c_contiguous
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


# --- read_rgb: display-referred formats -------------------------------------------------


def test_png_8bit_rgb_is_normalised(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb = read_rgb(str(write_image(tmp_path / "plate.png", stored, oiio.UINT8)))
    assert_frame(rgb)
    np.testing.assert_allclose(rgb, stored / 255.0, atol=1e-6)


def test_png_16bit_rgb_is_normalised(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    rgb = read_rgb(str(write_image(tmp_path / "plate.png", stored, oiio.UINT16)))
    assert_frame(rgb)
    np.testing.assert_allclose(rgb, stored / 65535.0, atol=1e-6)


def test_rgba_png_keeps_stored_colour_and_ignores_alpha(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    path = write_image(tmp_path / "plate.png", stored, oiio.UINT8, straight_alpha=True)
    rgb = read_rgb(str(path))
    assert_frame(rgb)
    # Not premultiplied by the alpha on the way in.
    np.testing.assert_allclose(rgb, stored[..., :3] / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_alpha(str(path)), stored[..., 3] / 255.0, atol=1e-6)


def test_gray_png_is_replicated_to_three_channels(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)
    rgb = read_rgb(str(write_image(tmp_path / "gray.png", stored, oiio.UINT8)))
    assert_frame(rgb)
    for channel in range(3):
        np.testing.assert_allclose(rgb[..., channel], stored[..., 0] / 255.0, atol=1e-6)


def test_gray_alpha_png_uses_the_gray_channel(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    stored = np.stack([gray, np.full_like(gray, 255 // 3)], axis=2)
    rgb = read_rgb(str(write_image(tmp_path / "gray.png", stored, oiio.UINT8, straight_alpha=True)))
    assert_frame(rgb)
    np.testing.assert_allclose(rgb, np.repeat(gray[..., None] / 255.0, 3, axis=2), atol=1e-6)


def test_jpeg_reads_close_to_what_was_written(tmp_path: Path) -> None:
    # A smooth gradient survives JPEG compression closely.
    ramp = np.linspace(0.1, 0.9, WIDTH, dtype=np.float32)
    stored = np.broadcast_to(ramp[None, :, None], (HEIGHT, WIDTH, 3))
    rgb = read_rgb(str(write_image(tmp_path / "plate.jpg", stored, oiio.UINT8)))
    assert_frame(rgb)
    np.testing.assert_allclose(rgb, stored, atol=0.03)


def test_tiff_16bit_rgb_is_normalised(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    rgb = read_rgb(str(write_image(tmp_path / "plate.tif", stored, oiio.UINT16)))
    assert_frame(rgb)
    np.testing.assert_allclose(rgb, stored / 65535.0, atol=1e-6)


# --- read_rgb: colourspaces ---------------------------------------------------------------


def test_exr_is_linear_and_gets_the_srgb_curve(tmp_path: Path, linear_rgb: np.ndarray) -> None:
    rgb = read_rgb(str(write_image(tmp_path / "plate.exr", linear_rgb, oiio.FLOAT)))
    assert_frame(rgb)
    np.testing.assert_allclose(rgb, srgb_formula(linear_rgb), atol=1e-6)
    # Highlights above 1 clip to white and negatives to black.
    assert (rgb[linear_rgb >= 1.0] == 1.0).all()
    assert (rgb[linear_rgb <= 0.0] == 0.0).all()


def test_rgba_exr_ignores_alpha(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.uniform(0.0, 1.0, (HEIGHT, WIDTH, 4)).astype(np.float32)
    path = write_image(tmp_path / "plate.exr", stored, oiio.FLOAT, ("R", "G", "B", "A"))
    np.testing.assert_allclose(read_rgb(str(path)), srgb_formula(stored[..., :3]), atol=1e-6)
    np.testing.assert_array_equal(read_alpha(str(path)), stored[..., 3])


def test_srgb_colourspace_leaves_exr_values(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.uniform(0.0, 1.0, (HEIGHT, WIDTH, 3)).astype(np.float32)
    rgb = read_rgb(str(write_image(tmp_path / "plate.exr", stored, oiio.FLOAT)), colourspace="srgb")
    np.testing.assert_array_equal(rgb, stored)


def test_linear_colourspace_applies_to_png(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    rgb = read_rgb(str(write_image(tmp_path / "plate.png", stored, oiio.UINT16)), colourspace="linear")
    np.testing.assert_allclose(rgb, srgb_formula(stored / 65535.0), atol=1e-6)


def test_ocio_linear_rec709_matches_builtin_linear(
    tmp_path: Path, linear_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OCIO", raising=False)
    path = str(write_image(tmp_path / "plate.exr", linear_rgb, oiio.FLOAT))
    through_ocio = read_rgb(path, colourspace="Linear Rec.709 (sRGB)")
    assert_frame(through_ocio)
    np.testing.assert_allclose(through_ocio, read_rgb(path, colourspace="linear"), atol=1e-4)


def test_unknown_colourspace_names_it_and_suggests_keywords(
    tmp_path: Path, linear_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OCIO", raising=False)
    path = str(write_image(tmp_path / "plate.exr", linear_rgb, oiio.FLOAT))
    with pytest.raises(ValueError, match=r"unknown colourspace 'ACES Wonder'.*'srgb', 'linear'"):
        read_rgb(path, colourspace="ACES Wonder")


def test_user_config_without_srgb_lists_the_names_tried(
    tmp_path: Path, linear_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.ocio"
    config.write_text(
        "ocio_profile_version: 2\n"
        "roles:\n  default: raw\n"
        "colorspaces:\n"
        "  - !<ColorSpace>\n    name: raw\n    isdata: true\n"
        "  - !<ColorSpace>\n    name: scene\n"
    )
    monkeypatch.setenv("OCIO", str(config))
    path = str(write_image(tmp_path / "plate.exr", linear_rgb, oiio.FLOAT))
    with pytest.raises(ValueError, match=r"no sRGB-encoded Rec.709 colourspace.*'sRGB - Texture'.*'srgb_tx'"):
        read_rgb(path, colourspace="scene")
    # The keywords never need a config.
    assert_frame(read_rgb(path, colourspace="linear"))


def test_unloadable_user_config_is_named(
    tmp_path: Path, linear_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "missing.ocio"
    monkeypatch.setenv("OCIO", str(config))
    path = str(write_image(tmp_path / "plate.exr", linear_rgb, oiio.FLOAT))
    with pytest.raises(ValueError, match=f"cannot load OCIO config '{config}'"):
        read_rgb(path, colourspace="ACEScg")


# --- read errors --------------------------------------------------------------------------


def test_nan_and_infinite_pixels_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.uniform(0.0, 1.0, (HEIGHT, WIDTH, 3)).astype(np.float32)
    stored[2, 3, 1] = np.nan
    stored[5, 1, 0] = np.inf
    stored[9, 0, 2] = -np.inf
    path = str(write_image(tmp_path / "plate.exr", stored, oiio.FLOAT))
    expected = r"contains 3 NaN/infinite pixel values \(first at x=3, y=2\)"
    with pytest.raises(ImageReadError, match=expected):
        read_rgb(path)
    with pytest.raises(ImageReadError, match=expected):
        read_rgb(path, colourspace="srgb")


def test_nan_in_alpha_is_refused(tmp_path: Path) -> None:
    stored = np.zeros((HEIGHT, WIDTH, 1), np.float32)
    stored[4, 6, 0] = np.nan
    path = str(write_image(tmp_path / "matte.exr", stored, oiio.FLOAT, ("A",)))
    with pytest.raises(ImageReadError, match=r"contains 1 NaN/infinite pixel values \(first at x=6, y=4\)"):
        read_alpha(path)


@pytest.mark.parametrize(
    ("name", "pixel_type"),
    [("plate.png", oiio.UINT8), ("plate.exr", oiio.HALF), ("plate.jpg", oiio.UINT8), ("plate.tif", oiio.UINT16)],
)
def test_truncated_files_are_refused(
    tmp_path: Path, rng: np.random.Generator, name: str, pixel_type: oiio.TypeDesc
) -> None:
    # Big enough that half the file cuts into the pixel data, not just the header.
    stored = rng.uniform(0.0, 1.0, (64, 80, 3)).astype(np.float32)
    path = str(truncate(write_image(tmp_path / name, stored, pixel_type)))
    with pytest.raises(ImageReadError, match=f"cannot read '{path}'"):
        read_rgb(path)
    with pytest.raises(ImageReadError, match=f"cannot read '{path}'"):
        read_alpha(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.exr")
    with pytest.raises(ImageReadError, match=f"cannot read '{path}'"):
        read_rgb(path)


def test_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(ImageReadError, match="cannot read '.*notes.png': .*PNG"):
        read_rgb(str(path))


# --- read_alpha and windows ---------------------------------------------------------------


def test_read_alpha_without_an_a_channel_uses_the_first(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 65536, (HEIGHT, WIDTH, 1), dtype=np.uint16)
    alpha = read_alpha(str(write_image(tmp_path / "matte.png", stored, oiio.UINT16)))
    assert alpha.shape == (HEIGHT, WIDTH) and alpha.dtype == np.float32
    np.testing.assert_allclose(alpha, stored[..., 0] / 65535.0, atol=1e-6)


def test_exr_data_window_is_placed_in_the_display_window(tmp_path: Path) -> None:
    # A render cropped to its bounding box: 3 x 2 pixels at (5, 4) of a 16 x 12 frame.
    spec = oiio.ImageSpec(3, 2, 3, oiio.FLOAT)
    spec.x, spec.y = 5, 4
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, WIDTH, HEIGHT
    path = str(tmp_path / "cropped.exr")
    output = oiio.ImageOutput.create(path)
    assert output.open(path, spec) and output.write_image(np.ones((2, 3, 3), np.float32)) and output.close()
    rgb = read_rgb(path)
    expected = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    expected[4:6, 5:8] = 1.0
    np.testing.assert_array_equal(rgb, expected)


# --- write_alpha --------------------------------------------------------------------------


@pytest.fixture
def alpha(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, (HEIGHT, WIDTH)).astype(np.float32)


def test_exr_float_round_trip_names_the_channel_a(tmp_path: Path, alpha: np.ndarray) -> None:
    path = tmp_path / "matte.exr"
    write_alpha(str(path), alpha)
    spec = image_spec(path)
    assert spec.channelnames == ("A",)
    assert spec.format == oiio.FLOAT
    assert spec.get_string_attribute("compression") == "zip"
    np.testing.assert_array_equal(read_alpha(str(path)), alpha)


def test_exr_half_round_trip(tmp_path: Path, alpha: np.ndarray) -> None:
    path = tmp_path / "matte.exr"
    write_alpha(str(path), alpha, half=True)
    spec = image_spec(path)
    assert spec.channelnames == ("A",)
    assert spec.format == oiio.HALF
    np.testing.assert_array_equal(read_alpha(str(path)), alpha.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("name", ["matte.png", "matte.tif", "matte.tiff"])
def test_16bit_round_trip_clips_and_rounds(tmp_path: Path, alpha: np.ndarray, name: str) -> None:
    alpha[0, 0], alpha[0, 1] = -0.5, 1.5
    path = tmp_path / name
    write_alpha(str(path), alpha)
    spec = image_spec(path)
    assert (spec.nchannels, spec.format) == (1, oiio.UINT16)
    np.testing.assert_allclose(read_alpha(str(path)), np.clip(alpha, 0.0, 1.0), atol=0.5 / 65535 + 1e-7)


def test_write_leaves_only_the_final_file(tmp_path: Path, alpha: np.ndarray) -> None:
    path = tmp_path / "matte.0001.exr"
    path.write_bytes(b"an older, broken frame")
    write_alpha(str(path), alpha)
    assert os.listdir(tmp_path) == ["matte.0001.exr"]
    np.testing.assert_array_equal(read_alpha(str(path)), alpha)


def test_failed_rename_removes_the_temporary_file(tmp_path: Path, alpha: np.ndarray) -> None:
    (tmp_path / "matte.exr").mkdir()  # a folder where the frame should go
    with pytest.raises(ImageWriteError, match="cannot write '.*matte.exr'"):
        write_alpha(str(tmp_path / "matte.exr"), alpha)
    assert os.listdir(tmp_path) == ["matte.exr"]


def test_missing_folder_is_refused(tmp_path: Path, alpha: np.ndarray) -> None:
    folder = tmp_path / "not_made"
    with pytest.raises(ImageWriteError, match=f"folder '{folder}' does not exist"):
        write_alpha(str(folder / "matte.exr"), alpha)
    assert not folder.exists()


def test_parent_that_is_a_file_is_refused(tmp_path: Path, alpha: np.ndarray) -> None:
    parent = tmp_path / "a_file"
    parent.write_text("")
    with pytest.raises(ImageWriteError, match=f"folder '{parent}'"):
        write_alpha(str(parent / "matte.png"), alpha)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders"
)
def test_read_only_folder_is_refused(tmp_path: Path, alpha: np.ndarray) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ImageWriteError, match=f"folder '{tmp_path}'"):
            write_alpha(str(tmp_path / "matte.exr"), alpha)
    finally:
        tmp_path.chmod(0o700)
    assert os.listdir(tmp_path) == []


def test_unsupported_extension_lists_the_supported_ones(tmp_path: Path, alpha: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\.jpg.*\.exr, \.png, \.tif, \.tiff"):
        write_alpha(str(tmp_path / "matte.jpg"), alpha)
    assert SUPPORTED_OUTPUTS == (".exr", ".png", ".tif", ".tiff")


@pytest.mark.parametrize(
    "bad", [np.zeros((HEIGHT, WIDTH, 1), np.float32), np.full((2, 2), np.nan, np.float32)]
)
def test_write_refuses_bad_alpha(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        write_alpha(str(tmp_path / "matte.exr"), bad)
    assert os.listdir(tmp_path) == []


def test_display_rgb_accepts_huge_finite_values_and_refuses_nan():
    from sparsemat.engine.imageio import display_rgb

    huge = np.full((4, 4, 3), 3e38, np.float32)  # their float32 sum overflows: the exact check decides
    assert display_rgb(huge).max() == 1.0
    bad = np.zeros((4, 4, 3), np.float32)
    bad[1, 2, 0] = np.inf
    with pytest.raises(ImageReadError, match=r"1 NaN/infinite pixel values \(first at x=2, y=1\)"):
        display_rgb(bad)
