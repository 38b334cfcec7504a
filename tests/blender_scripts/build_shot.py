"""blender -b --factory-startup --python build_shot.py -- PLATE_0001.png SHOT.blend FRAMES WIDTH HEIGHT

A compositor shot as an artist sets one up: the plate as an image sequence ("Plate") into the
Composite node, the render output a float RGBA EXR per frame, and a File Output node of the
artist's own ("Archive") fed by the plate. Before saving, the plate's frames are rendered to
//plates/ as float EXRs, written as SparseMat's own plate renders are, so a test can matte the
very same pixels with ``sparsemat matte``.
"""
import sys

import bpy

plate, blend, frames, width, height = sys.argv[sys.argv.index("--") + 1:]
frames = int(frames)
bpy.context.preferences.filepaths.save_version = 0  # no shot.blend1 backups
bpy.ops.wm.save_as_mainfile(filepath=blend)  # first, so that // paths mean the shot's folder
image = bpy.data.images.load(plate)
image.source = "SEQUENCE"
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, frames
scene.render.resolution_x, scene.render.resolution_y = int(width), int(height)  # the Composite's size
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "OPEN_EXR"
scene.render.image_settings.color_depth = "32"
scene.render.image_settings.color_mode = "RGBA"
scene.render.filepath = "//render/frame."
scene.use_nodes = True
tree = scene.node_tree
for node in list(tree.nodes):
    tree.nodes.remove(node)
node = tree.nodes.new("CompositorNodeImage")
node.name = "Plate"
node.image = image
node.frame_duration = frames
composite = tree.nodes.new("CompositorNodeComposite")
tree.links.new(node.outputs["Image"], composite.inputs["Image"])


def file_output(name: str, folder: str, file: str):
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.name = name
    output.base_path = folder
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    output.format.color_mode = "RGB"
    output.format.exr_codec = "NONE"
    output.file_slots[0].path = file
    tree.links.new(node.outputs["Image"], output.inputs[0])
    return output


plates = file_output("Plates", "//plates/", "plate.")
for frame in range(1, frames + 1):
    scene.frame_set(frame)
    bpy.ops.render.render(write_still=False)
tree.nodes.remove(plates)
file_output("Archive", "//archive/", "plate.")
scene.frame_set(1)
tree.nodes.active = node
bpy.ops.wm.save_as_mainfile(filepath=blend)
