"""What the SparseMat node does that is neither Nuke nor shared with other hosts: plain Python.

The node's output channel, its files (Nuke-style ``####`` and ``%V`` patterns), its stream
names and the Assert expression that fails its bad frames. What every host shares (settings,
transport, the engine request, pre-roll, messages) is ``sparsemat.plugin.host``. Nothing
here imports ``nuke`` or torch.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from sparsemat.plugin import host

OUTPUT_CHANNELS = ("rgba.alpha", "new layer")
DEFAULT_LAYER = "sparsemat"
SCRATCH_ENVIRONMENT = ("SPARSEMAT_NUKE_TEMP", "NUKE_TEMP_DIR")


@dataclass(frozen=True)
class Settings(host.Settings):
    """The node's knobs: what every host has, where the alpha goes in the node's output, and the
    frames whose matte the Keyframes input holds (none: each frame from its own inputs)."""
    channel: str = "rgba.alpha"
    keyframes: tuple = ()


def output_channel(output: str, layer: str) -> str:
    """'rgba.alpha', or '<layer>.alpha' for a new layer (the name checked for what Nuke accepts)."""
    if output == "rgba.alpha":
        return "rgba.alpha"
    name = (layer or "").strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise host.MatteError(f"layer name {name!r} must be letters, digits and underscores, not starting with a digit")
    if name in ("rgba", "rgb", "alpha", "depth", "mask", "forward", "backward"):
        raise host.MatteError(f"'{name}' is one of Nuke's own layers; pick a new layer name")
    return f"{name}.alpha"


# ---- paths ---------------------------------------------------------------------------------------

def node_folder(script: str, node: str) -> str:
    """Scratch folder of one node of one script, inside the session folder (under $SPARSEMAT_NUKE_TEMP,
    else $NUKE_TEMP_DIR, else the system temporary folder)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", node)[-40:]
    tag = hashlib.sha1(f"{script}\0{node}".encode()).hexdigest()[:10]
    folder = os.path.join(host.session_folder("nuke", SCRATCH_ENVIRONMENT), f"{slug}-{tag}")
    os.makedirs(folder, exist_ok=True)
    return folder


@dataclass(frozen=True)
class Paths:
    """Nuke-style patterns (``####`` for the frame, ``%V`` for the view) of one node's files."""
    source: str  # the plate, rendered by the internal Write (half, raw)
    prior: str  # the Prior input's alpha, rendered by the second internal Write
    trimap: str  # the Trimap input's alpha, rendered by the third
    clean_plate: str  # the CleanPlate input's colours, rendered by the fourth
    keyframes: str  # the Keyframes input's alpha on the keyframes, rendered by the fifth
    alpha: str  # the matte, written here, read by the internal Read


def paths(script: str, node: str) -> Paths:
    folder = node_folder(script, node)
    return Paths(*(os.path.join(folder, f"{name}.%V.####.exr")
                   for name in ("source", "prior", "trimap", "clean_plate", "keyframes", "alpha")))


class Rendered(NamedTuple):
    """One frame's files: the inputs rendered for the engine (a guide None when its input is not
    connected) and where its matte goes."""
    source: str
    prior: str | None
    trimap: str | None
    clean_plate: str | None
    alpha: str

    def inputs(self) -> tuple:
        return self.source, self.prior, self.trimap, self.clean_plate

    def guides(self) -> dict:
        """``host.matte``'s guide arguments."""
        return {"prior": self.prior, "trimap": self.trimap, "clean_plate": self.clean_plate}



_FRAME_TOKENS = re.compile(r"(#+)|%(0?\d*)d")


def frame_path(pattern: str, frame: int, view: str = "main") -> str:
    """``pattern`` with its frame (``####``, ``%04d``) and view (``%V`` name, ``%v`` initial) filled in,
    as Nuke fills them."""
    def number(match: re.Match) -> str:
        width = len(match.group(1)) if match.group(1) else int(match.group(2) or 0)
        return f"{frame:0{width}d}" if frame >= 0 else f"-{-frame:0{width}d}"

    return in_view(_FRAME_TOKENS.sub(number, pattern), view)


def in_view(pattern: str, view: str) -> str:
    """``pattern`` with its view (``%V`` name, ``%v`` initial) filled in; its frame token is kept."""
    return pattern.replace("%V", view).replace("%v", view[:1])


def stream_id(script: str, node: str, view: str) -> str:
    """The engine's name for one node's sequence in one view of one script, in this Nuke process."""
    return host.stream_id("nuke", script, node, view)


# ---- what the node shows --------------------------------------------------------------------------------

def assert_expression(failed: set[int]) -> str:
    """A Nuke expression, for an Assert node, that is false on exactly the ``failed`` frames."""
    if not failed:
        return "1"
    terms, frames = [], sorted(failed)
    start = previous = frames[0]
    for frame in frames[1:] + [None]:
        if frame is not None and frame == previous + 1:
            previous = frame
            continue
        terms.append(f"frame=={start}" if start == previous else f"(frame>={start}&&frame<={previous})")
        if frame is not None:
            start = previous = frame
    return f"!({'||'.join(terms)})"
