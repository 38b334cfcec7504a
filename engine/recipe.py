"""The published training recipe's values, apart from everything that trains with them, so that
the command line can show them as defaults without importing torch (docs/TRAINING.md)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """The published training recipe; every value is a flag of ``sparsemat train``."""

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 30
    decay_every: int = 10  # epochs
    decay: float = 0.1
    min_learning_rate: float = 1e-5
    batch: int = 12
    rescale: int = 560  # the short side of the prior network's copy, before its crop
    crop: int = 512  # the prior network's square crop of that copy
    patch_crops: tuple[int, ...] = (512, 640, 800)  # full-resolution patch sizes, drawn at random
    patch_size: int = 512  # each patch is resized to this before the refiner sees it
    flips: bool = True

    def learning_rate_at(self, epoch: int) -> float:
        """x ``decay`` every ``decay_every`` epochs (counted from 0), never under the floor."""
        return max(self.learning_rate * self.decay ** (epoch // self.decay_every), self.min_learning_rate)
