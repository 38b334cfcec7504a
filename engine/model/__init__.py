"""The SparseMat network: a low-resolution prior (LPN) and a sparse high-resolution refiner (SHM)."""
from __future__ import annotations

from torch import nn

from .checkpoint import CheckpointError, load_into
from .lpn import PriorNetwork
from .refiner import SparseRefiner


class SparseMat(nn.Module):
    """Parameters only; the inference rules live in ``sparsemat.engine.matting``."""

    def __init__(self):
        super().__init__()
        self.lpn = PriorNetwork()
        self.shm = SparseRefiner()  # "shm": the published checkpoint's name for the refiner

    @classmethod
    def from_checkpoint(cls, path: str) -> "SparseMat":
        model = cls()
        load_into(model, path)
        return model.eval()


__all__ = ["SparseMat", "CheckpointError"]
