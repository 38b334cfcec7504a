"""Render Writes with SparseMat nodes upstream, matting each frame first: the farm's and the
command line's way to render a script with SparseMat nodes.

    nuke -t <plugin folder>/sparsemat_nuke/render.py SCRIPT.nk FRAMES [WRITE ...]

FRAMES is ``1001-1100``, ``1-10x2`` or ``1,3,5-7``; WRITE names default to every
enabled Write at the top level of the script. For each frame, in order: every
SparseMat node upstream of the Writes (inside Groups and gizmos too) mattes the frame
in each view of the script (its internal Write renders the plate, the engine answers,
the alpha is written; each view is its own stream), then each Write renders the frame
in every view. When a node's keyframes knob is set, every node mattes the whole range
first (upstream first; that node from its keyframes at once), then the Writes render it.
Nothing is rendered from inside another render: Nuke refuses that, so a
plain ``nuke -x`` of such a script stops at its first frame with a message pointing here.
"""
from __future__ import annotations

import os
import sys

import nuke

from sparsemat.plugin import host
from sparsemat_nuke import work


def render(writes: list, frames: list, views: list | None = None) -> None:
    """Matte, then render, frame by frame, in ``views`` (default: the script's views); raises
    RuntimeError on the first frame that fails."""
    views = list(views or nuke.views())
    groups = {}  # every SparseMat node upstream of the writes, once each, by full name
    for write in writes:
        for group in work.upstream(write):
            groups.setdefault(group.fullName(), group)
    if any(work.keyframed(group) for group in groups.values()):
        # A node with keyframes mattes the whole range at once; every node then mattes the whole
        # range in turn, those upstream first, before anything renders.
        for group in groups.values():
            for view in views:
                if work.keyframed(group):
                    work.matte_from_keyframes_now(group, frames, view)
                else:
                    for frame in frames:
                        work.matte_now(group, frame, view)
        for frame in frames:
            for write in writes:
                nuke.execute(write, frame, frame, 1, views)
        return
    for frame in frames:
        for view in views:
            for group in groups.values():
                work.matte_now(group, frame, view)
        for write in writes:
            nuke.execute(write, frame, frame, 1, views)


def main(argv: list) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    script, frame_text, names = argv[0], argv[1], argv[2:]
    if not frame_text.strip():  # parse_frames would read it as an empty range and render nothing
        print("sparsemat: error: FRAMES is empty; give frames such as 1001-1100", file=sys.stderr)
        return 2
    try:  # before opening the script: a typo fails at once
        frames = host.parse_frames(frame_text, 0, -1)
    except host.MatteError as exc:
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return 2
    if not os.path.isfile(script):
        print(f"sparsemat: error: no script {script}", file=sys.stderr)
        return 2
    try:
        nuke.scriptOpen(script)
    except RuntimeError as exc:
        print(f"sparsemat: error: cannot open {script}: {exc}", file=sys.stderr)
        return 2
    if names:
        writes = [nuke.toNode(name) for name in names]
        missing = [name for name, write in zip(names, writes) if write is None]
        if missing:
            print(f"sparsemat: error: no node named {', '.join(missing)} in {script}", file=sys.stderr)
            return 2
    else:
        writes = [write for write in nuke.allNodes("Write") if not write["disable"].value()]
    try:
        render(writes, frames)
    except RuntimeError as exc:  # matte_now's message, or the Write's
        print(f"sparsemat: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
