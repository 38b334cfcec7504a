"""Render Writes with SparseMat nodes upstream, matting each frame first, without nested renders.

    nuke -t <plugin folder>/sparsemat_nuke/render.py SCRIPT.nk FRAMES [WRITE ...]

FRAMES is ``1001-1100``, ``1-10x2`` or ``1,3,5-7``; WRITE names default to every
enabled Write at the top level of the script. For each frame, in order: every
SparseMat node upstream of the Writes mattes the frame (its internal Write renders
the plate, the engine answers, the alpha is written), then each Write renders
the frame. The ``addBeforeFrameRender`` callback is switched off meanwhile.

``nuke -x`` and Nuke's Render menu rely on that callback instead, which renders
the plate from inside the Write's render; use this script on the farm when a
Nuke version refuses to execute a node from inside another node's render.
"""
from __future__ import annotations

import sys

import nuke

from sparsemat_nuke import core
from sparsemat_nuke import node as sparsemat_node


def render(writes: list, frames: list, view: str = "main") -> None:
    """Matte, then render, frame by frame; raises RuntimeError on the first frame that fails."""
    groups = {}  # every SparseMat node upstream of the writes, once each, by full name
    for write in writes:
        for group in sparsemat_node.upstream(write):
            groups.setdefault(group.fullName(), group)
    sparsemat_node._suppressed.set()
    try:
        for frame in frames:
            for group in groups.values():
                sparsemat_node.matte_now(group, frame, view)
            for write in writes:
                nuke.execute(write, frame, frame, 1, [view])
    finally:
        sparsemat_node._suppressed.clear()


def main(argv: list) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    script, frame_text, names = argv[0], argv[1], argv[2:]
    nuke.scriptOpen(script)
    if names:
        writes = [nuke.toNode(name) for name in names]
        missing = [name for name, write in zip(names, writes) if write is None]
        if missing:
            print(f"sparsemat: no node named {', '.join(missing)} in {script}", file=sys.stderr)
            return 2
    else:
        writes = [write for write in nuke.allNodes("Write") if not write["disable"].value()]
    try:
        frames = core.parse_frames(frame_text, 0, -1)
        render(writes, frames)
    except (core.MatteError, RuntimeError) as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
