"""blender -b SHOT.blend --python errors.py -- UNREACHABLE_ADDRESS RESULT.json

What an artist or a script sees when something is wrong: for each case, the operator's error
(``bpy.ops`` raises RuntimeError with the ERROR report) and whether it changed the tree.
"""
import json
import sys

import bpy

address, result_path = sys.argv[sys.argv.index("--") + 1:]
tree = bpy.context.scene.node_tree
prefs = bpy.context.preferences.addons["sparsemat_blender"].preferences
prefs.address = address
prefs.timeout = 0.5
before = sorted(node.name for node in tree.nodes)
results = {}


def attempt(name, **options):
    try:
        results[name] = {"outcome": sorted(bpy.ops.sparsemat.matte(**options))}
    except RuntimeError as exc:
        results[name] = {"error": str(exc)}
    results[name]["tree_unchanged"] = sorted(node.name for node in tree.nodes) == before


attempt("no engine", node="Plate")
attempt("bad frames", node="Plate", frames="5-1")
attempt("no such node", node="Plates")
attempt("no image output", node="Composite")
tree.nodes.active = None
attempt("nothing selected")
bpy.data.filepath and bpy.ops.wm.read_homefile(use_empty=True)  # an unsaved file from here on
bpy.context.scene.use_nodes = True
tree = bpy.context.scene.node_tree
node = tree.nodes.new("CompositorNodeImage")
node.name = "Plate"
before = sorted(n.name for n in tree.nodes)
attempt("unsaved file", node="Plate")
with open(result_path, "w") as file:
    json.dump(results, file)
