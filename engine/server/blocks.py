"""Clients' shared-memory blocks, kept mapped between requests (the engine's worker thread only)."""
from __future__ import annotations

import os
from collections import OrderedDict
from multiprocessing import resource_tracker, shared_memory

from sparsemat.plugin import protocol
from sparsemat.plugin.protocol import ProtocolError

SHM_FOLDER = "/dev/shm"


class SharedMemoryBlocks:
    """Mapping a block anew makes every page fault on first touch, which cost more than the copy
    itself; clients reuse their blocks (one for frames, one each for priors and trimaps), so the mappings are
    kept. A block is known by its name and inode, so a name reused for a new block is mapped
    afresh, and so is a block whose size changed (reading past a shrunk block's end would be a
    SIGBUS). What ``read`` hands its callback is valid until the block is unmapped: by ``close``,
    as the least recently read of over ``keep``, once its client has unlinked it, or when it is
    read again at another size. The engine reads pixels and writes alphas only while it
    answers a request, and keeps nothing of its own in them."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._blocks: OrderedDict = OrderedDict()  # (name, inode) -> SharedMemory

    def read(self, name: str, nbytes: int, read):
        """``read(buffer)`` on the block ``name``, which must hold at least ``nbytes``."""
        if not protocol.SHARED_MEMORY:
            raise ProtocolError("bad_request", "the shared-memory transport needs an engine on Linux; send pixels inline")
        try:
            info = os.stat(_block_path(name))
            key = (name.lstrip("/"), info.st_ino)  # "/x" and "x" name one block
            if key in self._blocks and self._blocks[key].size != info.st_size:
                self._unmap(key)
            if key not in self._blocks:
                self.let_go_of_closed()
                block = shared_memory.SharedMemory(name=name, create=False)
                # Attaching registers the block with this process's resource tracker, which would
                # unlink the client's block when the engine exits; the client owns it.
                resource_tracker.unregister(block._name, "shared_memory")  # noqa: SLF001
                self._blocks[key] = block
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise ProtocolError("bad_pixels", f"shared memory block {name!r} cannot be opened: {exc}") from exc
        self._blocks.move_to_end(key)
        while len(self._blocks) > self.keep:
            self._unmap(next(iter(self._blocks)))
        block = self._blocks[key]
        if block.size < nbytes:
            raise ProtocolError("size_mismatch", f"shared memory block {name!r} holds {block.size} bytes, "
                                                 f"the request needs {nbytes}")
        return read(block.buf)

    def let_go_of_closed(self) -> None:
        """Unmap the blocks whose clients have closed (unlinked) or replaced them: a mapping keeps a
        closed block's memory in use, up to a frame per block (800 MB for an 8K float frame)."""
        for key in list(self._blocks):
            name, inode = key
            try:
                current = os.stat(_block_path(name)).st_ino
            except OSError:
                current = None
            if current != inode:
                try:
                    self._unmap(key)
                except BufferError:  # a view of it is still in use: next time
                    pass

    def _unmap(self, key) -> None:
        self._blocks[key].close()
        del self._blocks[key]

    def close(self) -> None:
        while self._blocks:
            self._unmap(next(iter(self._blocks)))


def _block_path(name: str) -> str:
    return os.path.join(SHM_FOLDER, name.lstrip("/"))
