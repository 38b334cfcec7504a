"""SparseMat in Blender's compositor: the add-on's preferences, the matte operator and its panel.

The operator mattes one node's image output over a frame range. In the GUI it is modal: each
tick of a timer renders at most one plate (Blender renders in its main thread, as its own
Render does) and takes what the engine has finished, so the interface stays live between
frames; progress is in the status bar, Esc cancels, errors go to the report area. Run from a
script or ``blender -b`` it does the same steps in one call, and a failed frame raises
(``bpy.ops`` turns an ERROR report into RuntimeError).
"""
# No "from __future__ import annotations": Blender reads the properties from the class annotations.
import os
import re

import bpy

from sparsemat.plugin import host

from . import job as matte_job
from . import tree as node_tree

ADDON = __package__
tracker = host.StreamTracker()  # the last frame each stream matted in this Blender process
_running: set[str] = set()  # nodes being matted now
SCRATCH_ENVIRONMENT = ("SPARSEMAT_BLENDER_TEMP",)


class SparseMatPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    address: bpy.props.StringProperty(
        name="Engine address", default="",
        description="Where the SparseMat engine listens (empty: this user's default local socket)")
    checkpoint: bpy.props.StringProperty(
        name="Checkpoint", subtype="FILE_PATH", default="",
        description="Start a local engine with this checkpoint when none is running (empty: never start one)")
    timeout: bpy.props.FloatProperty(
        name="Timeout", default=10.0, min=0.1, soft_max=120.0, unit="TIME_ABSOLUTE",
        description="Longest silence from the engine before a frame fails (not the longest frame)")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "address")
        if not self.address.strip():
            layout.label(text=f"Default: {_default_address() or 'unavailable (see the system console)'}")
        layout.prop(self, "checkpoint")
        layout.prop(self, "timeout")


def _default_address() -> str:
    try:
        return host.default_address()
    except (ImportError, OSError, RuntimeError):  # msgpack missing, or an unsafe runtime folder
        return ""


def preferences(context) -> SparseMatPreferences:
    return context.preferences.addons[ADDON].preferences


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "node"


class SPARSEMAT_OT_matte(bpy.types.Operator):
    """Matte a compositor node's image over a frame range with the SparseMat engine, and apply the
    mattes to it through a Set Alpha node"""
    bl_idname = "sparsemat.matte"
    bl_label = "Matte with SparseMat"
    bl_options = {"REGISTER"}

    node: bpy.props.StringProperty(name="Node", description="The node to matte (empty: the active node)")
    output: bpy.props.StringProperty(name="Output", default="Image", description="Which of its outputs")
    frames: bpy.props.StringProperty(
        name="Frames", description="1-100, 1-100x2 or 1,5,9-12 (empty: the scene's frame range)")
    temporal: bpy.props.BoolProperty(
        name="Temporal", default=True, description="Refine only what changed since the previous frame")
    keyframe_interval: bpy.props.IntProperty(
        name="Keyframe interval", default=0, min=0,
        description="Matte every Nth frame afresh, so any frame can be re-matted alone (0: never)")
    colourspace: bpy.props.StringProperty(
        name="Input colourspace", default=host.DEFAULT_COLOURSPACE,
        description="What the node's pixels are: linear (Blender's scene linear), srgb, or an OpenColorIO name")
    folder: bpy.props.StringProperty(
        name="Folder", subtype="DIR_PATH", default="//sparsemat/",
        description="Where the mattes are written, one folder per node (// is the .blend's folder)")

    @classmethod
    def poll(cls, context):
        scene = context.scene
        return scene is not None and scene.use_nodes and scene.node_tree is not None

    # ---- planning (main thread) -----------------------------------------------------------------------

    def _plan(self, context) -> matte_job.MatteJob:
        """The job for this call's node and frames, or ValueError / host.MatteError with what is wrong."""
        scene = context.scene
        tree = scene.node_tree
        node = tree.nodes.get(self.node) if self.node else tree.nodes.active
        if node is None:
            raise ValueError(f"no node named '{self.node}' in the compositor" if self.node
                             else "select the node to matte (its image output is matted)")
        socket = node_tree.output_socket(node, self.output)
        frames = host.parse_frames(self.frames, scene.frame_start, scene.frame_end)
        if not frames:
            raise ValueError("no frames to matte")
        if min(frames) < 0:
            raise ValueError("SparseMat mattes frames 0 and later")
        if self.folder.startswith("//") and not bpy.data.filepath:
            raise ValueError("save the .blend first (the mattes go in //sparsemat/ beside it), or choose a folder")
        folder = os.path.join(bpy.path.abspath(self.folder), _slug(node.name))
        os.makedirs(folder, exist_ok=True)
        prefs = preferences(context)
        settings = host.Settings(address=prefs.address.strip() or host.default_address(),
                                 checkpoint=bpy.path.abspath(prefs.checkpoint) if prefs.checkpoint else "",
                                 temporal=self.temporal, keyframe_interval=self.keyframe_interval,
                                 colourspace=self.colourspace.strip() or host.DEFAULT_COLOURSPACE,
                                 timeout=prefs.timeout)
        stream = host.stream_id("blender", bpy.data.filepath or "untitled", scene.name, node.name, socket.name)
        work = host.with_preroll(frames, settings, tracker.last(stream, settings), scene.frame_start)
        scratch = os.path.join(host.session_folder("blender", SCRATCH_ENVIRONMENT), _slug(node.name))
        if node.name in _running:
            raise ValueError(f"'{node.name}' is already being matted; wait for it, or press Esc to cancel it")
        self._socket = (node.name, socket.identifier)
        self._folder = folder
        self._frame = scene.frame_current
        return matte_job.MatteJob(
            settings, stream, work,
            render=lambda frame: node_tree.render_plate(scene, self._find_socket(scene), scratch, frame),
            alpha_path=lambda frame: node_tree.alpha_path(folder, frame), tracker=tracker)

    def _find_socket(self, scene):
        node_name, identifier = self._socket
        node = scene.node_tree.nodes.get(node_name)
        if node is None:
            raise host.MatteError(f"the node '{node_name}' was deleted")
        return next(socket for socket in node.outputs if socket.identifier == identifier)

    def _finish(self, context, job: matte_job.MatteJob) -> set:
        """Wire what was matted, restore the frame, report; the operator's return value."""
        _running.discard(self._socket[0])
        context.scene.frame_set(self._frame)
        if job.matted:
            node_tree.wire_mattes(context.scene.node_tree, self._find_socket(context.scene), self._folder)
        if job.failure is not None:
            self.report({"ERROR"}, f"frame {job.failure.frame}: {job.failure.message}")
            return {"CANCELLED"}
        if job.cancelled:
            self.report({"WARNING"}, f"cancelled after {len(job.matted)} of {job.total} frames")
            return {"CANCELLED"}
        self.report({"INFO"}, f"matted {job.total} frames into {self._folder}; last {job.status}")
        return {"FINISHED"}

    # ---- one call (scripts, blender -b) -----------------------------------------------------------------

    def execute(self, context):
        try:
            job = self._plan(context)
        except (ValueError, host.MatteError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _running.add(self._socket[0])
        job.run()
        return self._finish(context, job)

    # ---- the GUI: a modal operator on a timer -------------------------------------------------------------

    def invoke(self, context, event):
        try:
            self._job = self._plan(context)
        except (ValueError, host.MatteError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _running.add(self._socket[0])
        manager = context.window_manager
        self._timer = manager.event_timer_add(0.05, window=context.window)
        manager.progress_begin(0, self._job.total)
        manager.modal_handler_add(self)
        self._show(context, "starting")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            self._show(context, "cancelling after this frame")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if job.step():
            context.window_manager.progress_update(len(job.matted))
            self._show(context, job.status or "rendering the first plate")
            return {"PASS_THROUGH"}
        manager = context.window_manager
        manager.event_timer_remove(self._timer)
        manager.progress_end()
        context.workspace.status_text_set(None)
        return self._finish(context, job)

    def _show(self, context, text: str) -> None:
        job = self._job
        context.workspace.status_text_set(
            f"SparseMat: {len(job.matted)}/{job.total} frames, {text} (Esc to cancel)")


class SPARSEMAT_PT_panel(bpy.types.Panel):
    bl_label = "SparseMat"
    bl_space_type = "NODE_EDITOR"
    bl_region_type = "UI"
    bl_category = "SparseMat"

    @classmethod
    def poll(cls, context):
        return context.space_data.tree_type == "CompositorNodeTree"

    def draw(self, context):
        layout = self.layout
        node = context.scene.node_tree.nodes.active if context.scene.node_tree else None
        layout.label(text=f"Input: {node.name}" if node else "Select the node to matte")
        layout.operator(SPARSEMAT_OT_matte.bl_idname, icon="NODE_COMPOSITING")
        prefs = preferences(context)
        layout.prop(prefs, "address")
        layout.prop(prefs, "checkpoint")


def _menu(self, context):
    if context.space_data.tree_type == "CompositorNodeTree":
        self.layout.separator()
        self.layout.operator(SPARSEMAT_OT_matte.bl_idname)


CLASSES = (SparseMatPreferences, SPARSEMAT_OT_matte, SPARSEMAT_PT_panel)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.NODE_MT_node.append(_menu)


def unregister() -> None:
    bpy.types.NODE_MT_node.remove(_menu)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
