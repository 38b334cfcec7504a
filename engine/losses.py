"""The published training recipe's losses and the band they are taken on (docs/TRAINING.md).

The refiner trains on an "unknown" band made from the ground-truth alpha, and every output of
its decoder (the side outputs and the alpha, each upsampled to the label's size) is compared to
the label on that band: a Charbonnier L1 and a Laplacian pyramid L1, plus a composition loss on
the final alpha when the foreground and background are known.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CHARBONNIER_EPSILON = 1e-10
PYRAMID_LEVELS = 5
# Side outputs (1/4, 1/2, full-resolution features), then the alpha; the composition term's weight.
OUTPUT_WEIGHTS = (0.1, 0.1, 0.1, 1.0)
COMPOSITION_WEIGHT = 0.5
TRAIN_BAND_KERNELS = (3, 9)  # the structuring element's size, drawn uniformly, inclusive
TRAIN_BAND_ITERATIONS = (1, 15)
VALIDATION_BAND = (5, 5)  # kernel size, iterations
VALIDATION_LONG_SIDE = 1280  # the validation band is made at this size, as published


def unknown_band(alpha: np.ndarray, kernel_size: int, iterations: int) -> np.ndarray:
    """Float 0/1 (H, W) mask of the pixels neither inside the eroded foreground (alpha 1) nor
    outside the dilated matte (alpha above 0), by an elliptical structuring element."""
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    foreground = cv2.erode((alpha >= 1).astype(np.uint8), element, iterations=iterations)
    matte = cv2.dilate((alpha > 0).astype(np.uint8), element, iterations=iterations)
    return ((matte == 1) & (foreground == 0)).astype(np.float32)


def random_unknown_band(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The training band: a random structuring element size and number of iterations."""
    kernel_size = int(rng.integers(TRAIN_BAND_KERNELS[0], TRAIN_BAND_KERNELS[1] + 1))
    iterations = int(rng.integers(TRAIN_BAND_ITERATIONS[0], TRAIN_BAND_ITERATIONS[1] + 1))
    return unknown_band(alpha, kernel_size, iterations)


def validation_band(alpha: np.ndarray) -> np.ndarray:
    """The fixed validation band, made on the alpha resized to ``VALIDATION_LONG_SIDE`` on its long
    side and brought back to the alpha's size by the nearest pixel."""
    height, width = alpha.shape
    ratio = VALIDATION_LONG_SIDE / max(height, width)
    small = cv2.resize(alpha, (max(1, round(width * ratio)), max(1, round(height * ratio))),
                       interpolation=cv2.INTER_LINEAR)
    band = unknown_band(small, *VALIDATION_BAND)
    return cv2.resize(band, (width, height), interpolation=cv2.INTER_NEAREST)


def charbonnier(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(sqrt(d^2 + eps) * mask) / (sum(mask) + 1)``; the mask broadcasts over channels and
    is counted once per pixel."""
    error = torch.sqrt((prediction - target) ** 2 + CHARBONNIER_EPSILON)
    return (error * mask).sum() / (mask.sum() + 1)


def _binomial_kernel(like: torch.Tensor) -> torch.Tensor:
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=like.dtype, device=like.device)
    return (row[:, None] * row[None, :] / 256).expand(like.shape[1], 1, 5, 5)


def _blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(image, (2, 2, 2, 2), mode="reflect"), kernel, groups=image.shape[1])


def laplacian_pyramid(image: torch.Tensor, levels: int = PYRAMID_LEVELS) -> list[torch.Tensor]:
    """``levels`` band-pass images (each level minus its blurred, halved and re-expanded copy),
    then the last level's low-pass residue: summing them back up gives the image."""
    kernel = _binomial_kernel(image)
    pyramid, current = [], image
    for _ in range(levels):
        down = _blur(current, kernel)[:, :, ::2, ::2]
        up = current.new_zeros(current.shape)
        up[:, :, ::2, ::2] = down
        pyramid.append(current - _blur(up, 4 * kernel))
        current = down
    return pyramid + [current]


def laplacian_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the pyramids' levels of the mean absolute difference, of the band's values only
    (both multiplied by the mask: outside it the refiner's output means nothing)."""
    ours, theirs = laplacian_pyramid(prediction * mask), laplacian_pyramid(target * mask)
    return sum(F.l1_loss(a, b) for a, b in zip(ours, theirs))


def composition_loss(alpha: torch.Tensor, image: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Charbonnier of ``alpha * fg + (1 - alpha) * bg`` against the image (B, 3, H, W), on the
    band, divided by 3 x (band count + 1)."""
    composite = alpha * foreground + (1 - alpha) * background
    error = torch.sqrt((composite - image) ** 2 + CHARBONNIER_EPSILON)
    return (error * mask).sum() / (3 * (mask.sum() + 1))


def refiner_loss(outputs: list[torch.Tensor], label: torch.Tensor, mask: torch.Tensor, image: torch.Tensor | None = None,
                 foreground: torch.Tensor | None = None, background: torch.Tensor | None = None) -> torch.Tensor:
    """The recipe's loss of the decoder's dense ``outputs`` (B, 1, h, w each, in OUTPUT_WEIGHTS'
    order, the alpha last), each upsampled bilinearly to the label's (B, 1, H, W) size; the
    composition term joins when the image, foreground and background are all given."""
    if len(outputs) != len(OUTPUT_WEIGHTS):
        raise ValueError(f"expected {len(OUTPUT_WEIGHTS)} outputs (three side outputs, then the alpha), "
                         f"got {len(outputs)}")
    total = label.new_zeros(())
    for weight, output in zip(OUTPUT_WEIGHTS, outputs):
        if output.shape[2:] != label.shape[2:]:
            output = F.interpolate(output, size=label.shape[2:], mode="bilinear", align_corners=False)
        total = total + weight * (charbonnier(output, label, mask) + laplacian_l1(output, label, mask))
    if image is not None and foreground is not None and background is not None:
        total = total + COMPOSITION_WEIGHT * composition_loss(outputs[-1], image, foreground, background, mask)
    return total
