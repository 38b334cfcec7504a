"""A client's shared-memory block: frames reach a local engine, and alphas come back, without copies.

Layout: the frame from offset 0, then ``ALPHA_SLOTS`` slots for a float32 alpha (none in the
block that carries a prior). The engine reads the frame in place and writes the alpha into
the slot a request names; it keeps nothing of its own in the block. The alpha the client
returns is a view of its slot, so it is never copied; a slot is used again only once nothing
refers to that view any more (nor to any array, view, memoryview or tensor made from it). A
caller that holds more alphas than there are slots gets the next one inline.

How liveness is known: each view is made by its own ``np.frombuffer`` call, whose array keeps
a memoryview of its own of the mapping as its base; every array, view or tensor made from
the alpha keeps that memoryview alive, and a weak reference to it says when the last is gone.
The memoryview also keeps the mapping itself alive, so an alpha stays valid after the block
is closed and unlinked.

Linux only (the block is a file in /dev/shm, as the engine finds it): the client uses blocks only there.
"""
from __future__ import annotations

import mmap
import os
import uuid
import weakref

import numpy as np

ALPHA_SLOTS = 2  # one alpha held by the caller while the next is computed, as a loop does
_ALIGN = 64
SHM_FOLDER = "/dev/shm"


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class SharedBlock:
    """Raises OSError when the system has no room for the block (a full or small /dev/shm)."""

    def __init__(self, frame_bytes: int, alpha_bytes: int):
        self.frame_bytes = _aligned(frame_bytes)
        self.slot_bytes = _aligned(alpha_bytes)
        size = self.frame_bytes + ALPHA_SLOTS * self.slot_bytes
        self.name = f"sparsemat-{os.getpid()}-{uuid.uuid4().hex[:16]}"  # the pid tells whose block it is
        self._path = os.path.join(SHM_FOLDER, self.name)
        descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Back every page now: tmpfs hands pages out on first write, and a write past a full
            # /dev/shm (a container's is often 64 MiB) kills the process with SIGBUS; reserving
            # turns that into an OSError here.
            os.posix_fallocate(descriptor, 0, size)
            self._map = mmap.mmap(descriptor, size)
        except OSError:
            os.unlink(self._path)
            raise
        finally:
            os.close(descriptor)
        # As multiprocessing.shared_memory does: a client that dies without closing leaves no block.
        # Imported here, not above: only shared memory needs it, and multiprocessing imported by a
        # ``blender -b --python`` script makes Blender 3.4 crash as it exits (exit status 139).
        from multiprocessing import resource_tracker

        resource_tracker.register("/" + self.name, "shared_memory")
        self._lent: list[weakref.ref | None] = [None] * ALPHA_SLOTS

    def fits(self, frame_bytes: int, alpha_bytes: int) -> bool:
        return frame_bytes <= self.frame_bytes and alpha_bytes <= self.slot_bytes

    def write_pixels(self, pixels: np.ndarray) -> None:
        np.frombuffer(self._map, dtype=pixels.dtype, count=pixels.size)[:] = pixels.reshape(-1)

    def free_slot(self) -> int | None:
        """A slot no returned alpha uses any more, or None."""
        for slot, lent in enumerate(self._lent):
            if lent is None or lent() is None:
                return slot
        return None

    def slot_offset(self, slot: int) -> int:
        return self.frame_bytes + slot * self.slot_bytes

    def alpha(self, slot: int, dtype, shape: tuple[int, int]) -> np.ndarray:
        """A view of ``slot`` as the alpha the engine writes there, lent until dropped: it may be
        made before the engine has written the slot (it reads nothing)."""
        alpha = np.frombuffer(self._map, dtype=dtype, count=shape[0] * shape[1], offset=self.slot_offset(slot))
        self._lent[slot] = weakref.ref(alpha.base)
        return alpha.reshape(shape)

    def close(self) -> None:
        """Unlink the block; alphas lent from it stay valid (the mapping lives as long as they do)."""
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        from multiprocessing import resource_tracker

        resource_tracker.unregister("/" + self.name, "shared_memory")
        self._map = None
