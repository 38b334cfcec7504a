"""The engine process: one warm model served over ZeroMQ (protocol in docs/PROTOCOL.md).

``loop`` (the main thread: the ROUTER socket, checks, ``hello`` and ``status``), ``requests``
(fields checked, pixels decoded), ``blocks`` (clients' shared memory), ``worker`` (the thread
that owns the model and the streams and computes).
"""
from __future__ import annotations

import os
import signal

from ..config import EngineConfig
from .loop import Engine


def run_engine(config: EngineConfig, findable=lambda: True) -> int:
    """Serve until shutdown or SIGTERM/SIGINT (which finish queued work first), or until
    ``findable()`` turns false (checked every few seconds); 1 if the model failed to load."""
    from ..loading import load_matter

    def load():
        return load_matter(config.checkpoint, config.device, half=config.half)

    name = f"SparseMat ({os.path.basename(config.checkpoint)})" if config.checkpoint else "guided refiner (no checkpoint)"
    engine = Engine(config, load, name, findable)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: engine.stop())
    engine.serve()
    return 1 if engine.worker.state == "failed" else 0
