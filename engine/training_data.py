"""Training data: datasets as file lists or folders, and the patches the published recipe cuts
from each example (docs/TRAINING.md).

A dataset is a file list of ``image,alpha[,fg,bg]`` lines (the published format, paths relative
to the list's folder) or a folder with ``alpha/`` and either ``image/`` (with optional ``fg/``
and ``bg/`` matched by name, for the composition loss) or ``fg/`` and ``bg/`` alone, composited
on the fly: each foreground over a background drawn at random, a new one every epoch.
Everything a run will read is checked before it starts; a sample that cannot be used later
(unreadable, an alpha of another size) raises ``DatasetError`` naming its files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .imageio import ImageReadError, read_alpha, read_rgb
from .losses import random_unknown_band
from .recipe import Recipe
from .sequence import images_by_name

SOFT_LOW, SOFT_HIGH = 0.05, 0.95  # a patch is centred on a pixel whose alpha lies between


class DatasetError(ValueError):
    """A dataset or one of its samples cannot be used; the message names the files."""


@dataclass(frozen=True)
class Entry:
    """One sample's files: ``image`` is None for a composite (foreground over a random background)."""

    image: str | None
    alpha: str
    foreground: str | None = None
    background: str | None = None


@dataclass(frozen=True)
class Dataset:
    entries: tuple[Entry, ...]
    backgrounds: tuple[str, ...] = ()  # drawn from for composites
    source: str = ""

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class Example:
    """One sample read: (H, W, 3) display-encoded image in [0, 1], (H, W) alpha, optional fg/bg."""

    image: np.ndarray
    alpha: np.ndarray
    foreground: np.ndarray | None
    background: np.ndarray | None


def open_dataset(path: str) -> Dataset:
    """A file list or a dataset folder, every file it names checked to exist."""
    if os.path.isdir(path):
        dataset = _folder_dataset(path)
    elif os.path.isfile(path):
        dataset = _list_dataset(path)
    else:
        raise DatasetError(f"dataset not found: {path} (a file list of image,alpha[,fg,bg] lines or a folder with "
                           f"alpha/ and image/ or fg/ and bg/)")
    if not dataset.entries:
        raise DatasetError(f"dataset {path} has no samples")
    missing = [name for entry in dataset.entries for name in (entry.image, entry.alpha, entry.foreground,
                                                              entry.background) if name and not os.path.isfile(name)]
    if missing:
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise DatasetError(f"dataset {path}: file not found: {missing[0]}{more}")
    return dataset


def _list_dataset(path: str) -> Dataset:
    folder = os.path.dirname(os.path.abspath(path))
    entries = []
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                names = [os.path.join(folder, name.strip()) for name in line.split(",")]
                if len(names) not in (2, 4) or not all(name.strip() for name in line.split(",")):
                    raise DatasetError(f"{path}, line {number}: expected image,alpha or image,alpha,fg,bg, got {line!r}")
                entries.append(Entry(*names))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not a text file list of image,alpha[,fg,bg] lines") from exc
    return Dataset(tuple(entries), source=path)


def _folder_dataset(root: str) -> Dataset:
    found = {name: images_by_name(os.path.join(root, name)) for name in ("image", "alpha", "fg", "bg")
             if os.path.isdir(os.path.join(root, name))}
    if "alpha" not in found or not ("image" in found or {"fg", "bg"} <= found.keys()):
        raise DatasetError(f"dataset folder {root} needs alpha/ and either image/ or fg/ and bg/")
    alphas = found["alpha"]
    if "image" in found:
        images = found["image"]
        unmatched = [stem for stem in images if stem not in alphas]
        if unmatched:
            raise DatasetError(f"dataset folder {root}: alpha/ has no file named {unmatched[0]} "
                               f"(for {images[unmatched[0]]})")
        paired = {"fg", "bg"} <= found.keys()
        entries = tuple(Entry(path, alphas[stem], found["fg"].get(stem) if paired else None,
                              found["bg"].get(stem) if paired else None) for stem, path in images.items())
        if paired and any(entry.foreground is None or entry.background is None for entry in entries):
            raise DatasetError(f"dataset folder {root}: with image/, fg/ and bg/ must have a file for every image")
        return Dataset(entries, source=root)
    unmatched = [stem for stem in found["fg"] if stem not in alphas]
    if unmatched:
        raise DatasetError(f"dataset folder {root}: alpha/ has no file named {unmatched[0]} "
                           f"(for {found['fg'][unmatched[0]]})")
    if not found["bg"]:
        raise DatasetError(f"dataset folder {root}: bg/ has no images to composite over")
    entries = tuple(Entry(None, alphas[stem], path) for stem, path in found["fg"].items())
    return Dataset(entries, tuple(found["bg"].values()), source=root)


def load_example(dataset: Dataset, index: int, rng: np.random.Generator, colourspace: str | None = None) -> Example:
    """Sample ``index`` read, its sizes checked; a composite's background drawn from ``rng``,
    resized to cover the foreground and cropped at random."""
    entry = dataset.entries[index]
    try:
        alpha = np.clip(read_alpha(entry.alpha), 0.0, 1.0)
        foreground = None if entry.foreground is None else read_rgb(entry.foreground, colourspace)
        if entry.image is None:
            background = _cover(read_rgb(dataset.backgrounds[rng.integers(len(dataset.backgrounds))], colourspace),
                                alpha.shape, rng)
        else:
            background = None if entry.background is None else read_rgb(entry.background, colourspace)
        image = read_rgb(entry.image, colourspace) if entry.image else None
    except ImageReadError as exc:
        raise DatasetError(f"sample {index + 1} of {dataset.source} cannot be read: {exc}") from exc
    for label, pixels, path in (("image", image, entry.image), ("foreground", foreground, entry.foreground),
                                ("background", background, entry.background)):
        if pixels is not None and pixels.shape[:2] != alpha.shape:
            raise DatasetError(f"sample {index + 1} of {dataset.source}: the alpha {entry.alpha} is "
                               f"{alpha.shape[1]}x{alpha.shape[0]}, the {label} {path} {pixels.shape[1]}x"
                               f"{pixels.shape[0]}: they must be the same size")
    if image is None:
        image = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    return Example(np.ascontiguousarray(image, dtype=np.float32), alpha, foreground, background)


def _cover(background: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``background`` scaled to cover ``size`` (H, W) and cropped there at random."""
    height, width = size
    scale = max(height / background.shape[0], width / background.shape[1])
    scaled = cv2.resize(background, (max(width, round(background.shape[1] * scale)),
                                     max(height, round(background.shape[0] * scale))), interpolation=cv2.INTER_LINEAR)
    top = rng.integers(scaled.shape[0] - height + 1)
    left = rng.integers(scaled.shape[1] - width + 1)
    return scaled[top:top + height, left:left + width]


@dataclass(frozen=True)
class PatchArrays:
    """A patch as the published recipe cuts it: the prior network's ``view`` (crop x crop), and the
    full-resolution patch over ``box`` of it (x1, y1, x2, y2 as fractions of the view), resized to
    the recipe's patch size."""

    view: np.ndarray
    image: np.ndarray
    alpha: np.ndarray
    band: np.ndarray
    box: tuple[float, float, float, float]
    foreground: np.ndarray | None
    background: np.ndarray | None


def published_patch(example: Example, recipe: Recipe, rng: np.random.Generator) -> PatchArrays:
    """The band from the whole alpha (random element and iterations); the image rescaled to
    ``recipe.rescale`` on its short side and a random ``crop`` square of it for the prior network;
    within the same region at full resolution, a patch of one of ``patch_crops`` pixels centred on
    a random soft pixel, resized to ``patch_size``; everything mirrored at random."""
    height, width = example.alpha.shape
    band = random_unknown_band(example.alpha, rng)
    ratio = recipe.rescale / min(height, width)
    low_h, low_w = max(recipe.crop, int(ratio * height)), max(recipe.crop, int(ratio * width))
    low = cv2.resize(example.image, (low_w, low_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(rng.integers(low_h - recipe.crop + 1)), int(rng.integers(low_w - recipe.crop + 1))
    view = low[top:top + recipe.crop, left:left + recipe.crop]
    rows = slice(int(top * height / low_h), int((top + recipe.crop) * height / low_h))
    columns = slice(int(left * width / low_w), int((left + recipe.crop) * width / low_w))
    region = {name: None if value is None else value[rows, columns]
              for name, value in (("image", example.image), ("alpha", example.alpha), ("band", band),
                                  ("foreground", example.foreground), ("background", example.background))}
    x1, y1, size = _patch_square(region["alpha"], int(rng.choice(recipe.patch_crops)), rng)
    region_h, region_w = region["alpha"].shape
    box = (x1 / region_w, y1 / region_h, (x1 + size) / region_w, (y1 + size) / region_h)
    out = (recipe.patch_size, recipe.patch_size)
    patch = {name: None if value is None else
             cv2.resize(np.ascontiguousarray(value[y1:y1 + size, x1:x1 + size]), out,
                        interpolation=cv2.INTER_NEAREST if name == "band" else cv2.INTER_LINEAR)
             for name, value in region.items()}
    if recipe.flips and rng.random() < 0.5:
        view = view[:, ::-1]
        patch = {name: None if value is None else value[:, ::-1] for name, value in patch.items()}
        box = (1 - box[2], box[1], 1 - box[0], box[3])
    contiguous = {name: None if value is None else np.ascontiguousarray(value, dtype=np.float32)
                  for name, value in patch.items()}
    return PatchArrays(np.ascontiguousarray(view, dtype=np.float32), box=box, **contiguous)


def _patch_square(alpha: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(left, top, size) of a square patch: ``size`` but inside ``alpha``, centred on a random pixel
    whose alpha is soft (the region's centre when none is)."""
    ys, xs = np.nonzero((alpha > SOFT_LOW) & (alpha < SOFT_HIGH))
    return _square_around(ys, xs, alpha.shape, size, rng)


def _square_around(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], size: int,
                   rng: np.random.Generator) -> tuple[int, int, int]:
    """(left, top, size) of a square of ``size`` (smaller for a smaller ``shape``) centred on one of
    the pixels ``ys, xs`` drawn at random (the centre when there are none), kept inside ``shape``."""
    height, width = shape
    size = min(size, height, width)
    if len(ys):
        pick = rng.integers(len(ys))
        cy, cx = int(ys[pick]), int(xs[pick])
    else:
        cy, cx = height // 2, width // 2
    top = min(max(cy - size // 2, 0), height - size)
    left = min(max(cx - size // 2, 0), width - size)
    return left, top, size


def band_crop(band_pixels: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], size: int,
              rng: np.random.Generator) -> tuple[int, int, int]:
    """(top, left, size) of a square of ``size`` pixels centred on one of ``band_pixels`` (``np.nonzero``
    of a frame's band, computed once) drawn at random, kept inside the frame: where a shot's
    keyframe trains."""
    left, top, size = _square_around(*band_pixels, shape, size, rng)
    return top, left, size
