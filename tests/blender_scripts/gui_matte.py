"""blender SHOT.blend --python gui_matte.py -- ADDRESS RESULT.json   (Blender's GUI, under Xvfb in tests)

Presses "Matte with SparseMat" as an artist does, from a compositor editor (the operator's
invoke: modal, on a timer), then watches from a timer of its own until the mattes are wired in.
The watcher's ticks while the job runs show Blender's event loop kept running. Writes what it
saw to RESULT.json and quits.
"""
import json
import os
import sys
import time

import bpy

address, result_path = sys.argv[sys.argv.index("--") + 1:]
seen = {"ticks_while_matting": 0, "archive_during": None}
started = time.monotonic()


def compositor_area():
    area = bpy.context.window.screen.areas[0]
    area.type = "NODE_EDITOR"
    area.ui_type = "CompositorNodeTree"
    return area


def start():
    bpy.context.preferences.addons["sparsemat_blender"].preferences.address = address
    area = compositor_area()
    region = next(region for region in area.regions if region.type == "WINDOW")
    with bpy.context.temp_override(window=bpy.context.window, area=area, region=region):
        seen["invoke"] = sorted(bpy.ops.sparsemat.matte("INVOKE_DEFAULT", keyframe_interval=2))
    return 0.05


def watch():
    tree = bpy.context.scene.node_tree
    done = "SparseMat Plate" in tree.nodes
    if not done:
        seen["ticks_while_matting"] += 1
        archive = bpy.path.abspath("//archive/")
        seen["archive_during"] = sorted(os.listdir(archive)) if os.path.isdir(archive) else []
    if done or time.monotonic() - started > 300:
        seen["nodes"] = sorted(node.name for node in tree.nodes)
        seen["links"] = sorted(f"{link.from_node.name}.{link.from_socket.name} -> {link.to_node.name}."
                               f"{link.to_socket.name}" for link in tree.links)
        seen["frame"] = bpy.context.scene.frame_current
        with open(result_path, "w") as file:
            json.dump(seen, file)
        bpy.ops.wm.quit_blender()
        return None
    return 0.05


steps = iter([start])


def tick():
    step = next(steps, None)
    return step() if step else watch()


bpy.app.timers.register(tick, first_interval=0.5)
