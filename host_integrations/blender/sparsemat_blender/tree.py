"""The compositor side: rendering a node's output to EXR, and wiring the mattes back in (``bpy``).

Behaviour relied on, checked in Blender 3.4 here (tests/test_blender.py runs it):
- A File Output node writes its input at the input's own resolution, whatever the render size,
  and an OPEN_EXR 32-bit file holds scene-linear pixels (no view transform), so the plate the
  engine reads is what the node tree computes.
- A render only renders the 3D scene when the tree has an unmuted Render Layers node
  (``compositor_needs_render`` in Blender's render pipeline): muting the Render Layers nodes
  the chosen input does not depend on turns a plate render into a compositing pass.
- An image sequence of one-channel ("A") float EXRs comes through an Image node's Alpha output
  bit for bit.
"""
from __future__ import annotations

import os
import re

import bpy

PLATE_OUTPUT = "SparseMat plate (temporary)"
ALPHA_FILE = re.compile(r"alpha\.(\d+)\.exr$")


def output_socket(node, name: str = "Image"):
    """The node's colour output to matte (``name``, else its first enabled colour output)."""
    sockets = [socket for socket in node.outputs if socket.enabled and socket.type == "RGBA"]
    for socket in sockets:
        if socket.name == name or socket.identifier == name:
            return socket
    if not sockets:
        raise ValueError(f"the node '{node.name}' has no image output to matte")
    if name and name != "Image":
        raise ValueError(f"the node '{node.name}' has no output '{name}' "
                         f"(it has {', '.join(repr(s.name) for s in sockets)})")
    return sockets[0]


def _upstream(node) -> set:
    """Names of ``node`` and every node it is computed from."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        for socket in current.inputs:
            stack.extend(link.from_node for link in socket.links if link.is_valid)
    return seen


def render_plate(scene, socket, folder: str, frame: int) -> str:
    """Render frame ``frame`` of ``socket`` to a float EXR in ``folder``; returns the file.

    For the length of the render only: a File Output node is linked to the socket, the user's own
    File Output nodes are muted (they would write their files) and so are the Render Layers nodes
    the socket does not depend on (they would render the 3D scene). The tree is as it was after."""
    tree = scene.node_tree
    needed = _upstream(socket.node)
    muted = [node for node in tree.nodes if not node.mute and (
        node.bl_idname == "CompositorNodeOutputFile"
        or (node.bl_idname == "CompositorNodeRLayers" and node.name not in needed))]
    prefix = f"plate-{frame}-"  # Blender appends the frame number and the extension
    os.makedirs(folder, exist_ok=True)
    _remove_plates(folder, prefix)  # a plate an earlier run left behind
    output = tree.nodes.new("CompositorNodeOutputFile")
    try:
        output.name = output.label = PLATE_OUTPUT
        output.base_path = folder + os.sep
        output.format.file_format = "OPEN_EXR"
        output.format.color_depth = "32"
        output.format.color_mode = "RGB"
        output.format.exr_codec = "NONE"
        output.file_slots[0].path = prefix
        tree.links.new(socket, output.inputs[0])
        for node in muted:
            node.mute = True
        scene.frame_set(frame)
        bpy.ops.render.render(write_still=False, scene=scene.name)
    finally:
        for node in muted:
            node.mute = False
        tree.nodes.remove(output)
    files = _plates(folder, prefix)
    if len(files) != 1:
        raise RuntimeError(f"Blender rendered no plate for frame {frame} (is compositing enabled in the "
                           f"output properties' post processing?)")
    return files[0]


def _plates(folder: str, prefix: str) -> list[str]:
    return [os.path.join(folder, name) for name in os.listdir(folder) if name.startswith(prefix)]


def _remove_plates(folder: str, prefix: str) -> None:
    for path in _plates(folder, prefix):
        os.remove(path)


def alpha_path(folder: str, frame: int) -> str:
    return os.path.join(folder, f"alpha.{frame:04d}.exr")


def matted_frames(folder: str) -> list[int]:
    """The frames with an alpha file in ``folder``."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(match.group(1)) for match in map(ALPHA_FILE.match, os.listdir(folder)) if match)


def wire_mattes(tree, socket, folder: str):
    """An Image node reading ``folder``'s alphas as a sequence, and a Set Alpha node that applies them
    to ``socket``. The first time, the Set Alpha node takes over what ``socket`` fed; running it again
    for the same input reuses both nodes, reloads the files and leaves the links as the artist
    arranged them. Returns the Set Alpha node."""
    frames = matted_frames(folder)
    source = socket.node
    name = f"SparseMat {source.name}"
    image = _alpha_image(alpha_path(folder, frames[0]))
    matte = tree.nodes.get(f"{name} matte")
    if matte is None:
        matte = tree.nodes.new("CompositorNodeImage")
        matte.name = f"{name} matte"
        matte.label = "SparseMat matte"
        matte.location = (source.location.x + 220, source.location.y - 220)
    matte.image = image
    matte.frame_start = frames[0]
    matte.frame_duration = frames[-1] - frames[0] + 1
    matte.frame_offset = frames[0] - 1  # file number = scene frame (Blender: frame - start + 1 + offset)
    apply = tree.nodes.get(name)
    if apply is None:
        apply = tree.nodes.new("CompositorNodeSetAlpha")
        apply.name = name
        apply.label = "SparseMat"
        apply.location = (source.location.x + 440, source.location.y)
        apply.mode = "APPLY"  # premultiplied, as Blender's keyers give it
        for target in [link.to_socket for link in socket.links]:  # linking to a taken input replaces its link
            tree.links.new(apply.outputs["Image"], target)
        tree.links.new(socket, apply.inputs["Image"])
    tree.links.new(matte.outputs["Alpha"], apply.inputs["Alpha"])
    return apply


def _alpha_image(path: str):
    image = bpy.data.images.load(path, check_existing=True)
    image.source = "SEQUENCE"
    image.colorspace_settings.name = "Non-Color"
    image.reload()
    return image
