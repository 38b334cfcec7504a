"""SparseMat for Blender's compositor: mattes a node's image through a running SparseMat engine.

``job`` is plain Python; ``tree`` and ``ui`` are the Blender glue. The engine client and its
dependencies (numpy, pyzmq, msgpack) come from the folder install/install_blender.py fills for
Blender's Python version; nothing here imports torch: the model lives in the engine process.
"""
from __future__ import annotations

import os
import sys

bl_info = {
    "name": "SparseMat",
    "author": "SparseMat",
    "version": (1, 0, 0),
    "blender": (3, 0, 0),
    "location": "Compositor > Node > Matte with SparseMat; sidebar > SparseMat",
    "description": "Full-resolution alpha mattes from the SparseMat engine",
    "category": "Compositing",
}


def site_packages() -> str:
    """Where install_blender.py puts numpy, pyzmq, msgpack and sparsemat.plugin for this Python version."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", version, "site-packages")


def register() -> None:
    # Appended, not prepended: Blender's own numpy keeps winning, so its tools see the build they
    # were made with; ours only fill the gaps.
    folder = site_packages()
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.append(folder)
    try:
        from . import ui
    except ImportError as exc:  # Blender shows this when the add-on is enabled
        raise ImportError(f"SparseMat cannot load ({exc}); run install/install_blender.py for this Blender") from exc
    ui.register()


def unregister() -> None:
    from . import ui

    ui.unregister()
