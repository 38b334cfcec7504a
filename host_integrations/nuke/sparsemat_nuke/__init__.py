"""SparseMat for Nuke: a Python-only node that mattes through a running SparseMat engine.

``core`` and ``exr`` are plain Python (numpy, plus the engine client at matte time)
and never import ``nuke``; ``node`` and ``render`` are the thin Nuke glue. Nothing
here imports torch: the model lives in the engine process.
"""
from __future__ import annotations

import os
import sys

__version__ = "1"


def site_packages() -> str:
    """Where install_nuke.py puts numpy, pyzmq, msgpack and sparsemat.plugin for this Python version."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return os.path.join(here, "lib", version, "site-packages")


def add_site_packages() -> bool:
    """Put this Python version's dependency folder on sys.path, when the installer made one.

    Appended, not prepended: a package Nuke bundles itself (numpy, in recent versions) keeps
    winning, so Nuke's own tools see the build they were made with; ours only fill the gaps."""
    folder = site_packages()
    if not os.path.isdir(folder):
        return False
    if folder not in sys.path:
        sys.path.append(folder)
    return True
