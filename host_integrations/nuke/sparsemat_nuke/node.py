"""The SparseMat node in Nuke: a Group built from Python, its knobs, and what it shows.

Thin glue over ``core``: it reads knobs, points the internal Read at the alpha, and shows
status and errors; ``work`` does the matting. How pixels move (Python has no bulk pixel
access in Nuke):

    Source -> SourceWrite (EXR, half, raw) -> [engine] -> alpha EXR -> AlphaRead (raw)
    Source ----------------------------------------------------------> AlphaCopy -> ForegroundCopy -> EngineError (Assert) -> Output
    (ForegroundCopy, when the foreground knob is on: rgb from the alpha EXR's premultiplied foreground)
    Prior  -> PriorWrite (EXR, alpha, float, raw) -> [engine, as the prior]
    Trimap -> TrimapWrite (EXR, alpha, float, raw) -> [engine, as the trimap]
    CleanPlate -> CleanPlateWrite (EXR, half, raw) -> [engine, as the clean plate]
    Keyframes -> KeyframeWrite (EXR, alpha, float, raw; on the keyframes only) -> [sparsemat matte --keyframe-alpha]

Everything here runs in Nuke's main thread and never inside a render callback (Nuke refuses
node edits there).
"""
from __future__ import annotations

import threading

import nuke

from sparsemat.plugin import host

from . import __version__, core

MARKER = "sparsemat_version"  # hidden knob that marks a Group as a SparseMat node
SOURCE_WRITE, PRIOR_WRITE, TRIMAP_WRITE, CLEAN_PLATE_WRITE = "SourceWrite", "PriorWrite", "TrimapWrite", "CleanPlateWrite"
ALPHA_READ, COPY, FOREGROUND_COPY, ASSERT = "AlphaRead", "AlphaCopy", "ForegroundCopy", "EngineError"
KEYFRAMES_INPUT, KEYFRAME_WRITE = 4, "KeyframeWrite"  # the artist's mattes on a few frames (the keyframes knob)
# (input number, input name, its Write, the channels it renders): the optional guides, after Source
GUIDES = ((1, "Prior", PRIOR_WRITE, "alpha"), (2, "Trimap", TRIMAP_WRITE, "alpha"),
          (3, "CleanPlate", CLEAN_PLATE_WRITE, "rgb"))

_lock = threading.Lock()
_failed: dict[str, set] = {}  # node full name -> frames whose matte failed (the Assert fails on them)


# ---- building the node -----------------------------------------------------------------------------

def create(name: str = "SparseMat"):
    """Create a SparseMat node in the current group, connected to the selected node; returns it."""
    try:
        selected = nuke.selectedNode()
    except ValueError:
        selected = None
    group = nuke.nodes.Group()
    group.setName(f"{name}1", uncollide=True)  # SparseMat1, SparseMat2, ... as Nuke numbers nodes
    _add_knobs(group)
    _build_internals(group)
    if selected is not None:
        group.setInput(0, selected)
    return group


def _knob(group, knob, value=None, tooltip: str = ""):
    if value is not None:
        knob.setValue(value)
    if tooltip:
        knob.setTooltip(tooltip)
    group.addKnob(knob)
    return knob


def _add_knobs(group) -> None:
    try:
        address = host.default_address()
    except ImportError:  # msgpack missing: the node still builds, and says what to install when used
        address = ""
    command = "import sparsemat_nuke.work\nsparsemat_nuke.work.{}(nuke.thisNode())"
    _knob(group, nuke.Tab_Knob("sparsemat", "SparseMat"))
    _knob(group, nuke.String_Knob("address", "engine address"), address,
          "ipc://PATH or tcp://HOST:PORT of a running SparseMat engine. Local addresses (ipc, localhost) "
          "get the plate as a file; remote ones get the pixels in the message.")
    _knob(group, nuke.File_Knob("checkpoint", "checkpoint"), "",
          "SparseMat.pth: only used to start a local engine when none answers at the address.")
    _knob(group, nuke.Double_Knob("timeout", "timeout (s)"), 10.0,
          "Longest silence from the engine before retrying (a slow frame is not silence).")
    _knob(group, nuke.Boolean_Knob("temporal", "temporal"), True,
          "Reuse the previous frame's alpha where the plate did not change.")
    _knob(group, nuke.Int_Knob("keyframe_interval", "keyframe interval"), 0,
          "When > 0, frames that are multiples of it are computed in full, and a render starting "
          "elsewhere first re-mattes the frames since the last one: results do not depend on farm chunks.")
    _knob(group, nuke.Int_Knob("trimap_dilation", "trimap dilation"), 0,
          "With a Trimap input (its alpha: 0 background, 1 foreground, anything between unknown): pixels its "
          "unknown region grows by on each side (0 to 256). Known pixels are exact in the matte.")
    _knob(group, nuke.String_Knob("keyframes", "keyframes"), "",
          "Frames whose matte the Keyframes input's alpha holds (1,40 or 1-100x10): those frames get that matte, "
          "and every other frame the keyframes' mattes either side of it, carried by the plate's motion and "
          "refined. Empty: each frame is matted from its own inputs. Not with Prior, Trimap or CleanPlate.")
    _knob(group, nuke.Boolean_Knob("foreground", "foreground in rgb"), False,
          "Replace rgb with the foreground, unmixed from the old background where the matte is partial and "
          "premultiplied by it: merge the output over a new background without the old one's fringes.")
    _knob(group, nuke.String_Knob("colourspace", "input colourspace"), host.DEFAULT_COLOURSPACE,
          "Colourspace of the input's pixels as rendered raw: linear (scene-linear Rec.709), srgb, or an "
          "OpenColorIO colourspace name of the engine's config (ACEScg, ...).")
    _knob(group, nuke.Enumeration_Knob("output", "output", list(core.OUTPUT_CHANNELS)), "rgba.alpha",
          "Put the matte in rgba.alpha, or in <layer>.alpha of a new layer.")
    _knob(group, nuke.String_Knob("layer", "layer"), core.DEFAULT_LAYER, "Name of the new layer.")
    _knob(group, nuke.String_Knob("frames", "frame range"), "",
          "Frames for 'matte frame range' (1-100, 1-100x2, 1,3,5-7); empty: the input's range.")
    _knob(group, nuke.PyScript_Knob("matte_frame", "matte this frame", command.format("matte_this_frame")))
    _knob(group, nuke.PyScript_Knob("matte_range", "matte frame range", command.format("matte_frame_range")))
    _knob(group, nuke.Text_Knob("status", "status"), "not matted yet")
    marker = _knob(group, nuke.String_Knob(MARKER, ""), __version__)
    marker.setVisible(False)
    group["knobChanged"].setValue("import sparsemat_nuke.node\nsparsemat_nuke.node.knob_changed()")


def _set(node, **knobs) -> None:
    """Set the knobs this Nuke version has (in order: file_type first makes the format's knobs exist)."""
    for name, value in knobs.items():
        knob = node.knob(name)
        if knob is not None:
            knob.setValue(value)


def _build_internals(group) -> None:
    group.begin()
    try:
        source = nuke.nodes.Input(name="Source")
        _set(source, number=0)
        write = nuke.nodes.Write(name=SOURCE_WRITE)
        _set(write, file_type="exr", datatype="16 bit half", compression="none", channels="rgb", raw=True,
             disable=True)
        write.setInput(0, source)
        for number, name, write_name, channels in GUIDES:
            guide = nuke.nodes.Input(name=name)
            _set(guide, number=number)
            guide_write = nuke.nodes.Write(name=write_name)
            _set(guide_write, file_type="exr", datatype="32 bit float" if channels == "alpha" else "16 bit half",
                 compression="none", channels=channels, raw=True, disable=True)
            guide_write.setInput(0, guide)
        keyframes = nuke.nodes.Input(name="Keyframes")
        _set(keyframes, number=KEYFRAMES_INPUT)
        keyframe_write = nuke.nodes.Write(name=KEYFRAME_WRITE)
        _set(keyframe_write, file_type="exr", datatype="32 bit float", compression="none", channels="alpha", raw=True,
             disable=True)
        keyframe_write.setInput(0, keyframes)
        read = nuke.nodes.Read(name=ALPHA_READ)
        _set(read, raw=True, on_error="black", before="black", after="black")
        copy = nuke.nodes.Copy(name=COPY)
        _set(copy, from0="rgba.alpha", to0="rgba.alpha")
        copy.setInput(0, source)  # B: the plate passes through
        copy.setInput(1, read)  # A: the matte
        foreground = nuke.nodes.Copy(name=FOREGROUND_COPY)
        _set(foreground, from0="rgba.red", to0="rgba.red", from1="rgba.green", to1="rgba.green", from2="rgba.blue",
             to2="rgba.blue", disable=True)
        foreground.setInput(0, copy)
        foreground.setInput(1, read)
        check = nuke.nodes.Assert(name=ASSERT)
        check["expression"].setExpression("1")  # an integer knob driven by an expression (Foundry's Assert.cpp)
        _set(check, message="")
        check.setInput(0, foreground)
        output = nuke.nodes.Output()
        output.setInput(0, check)
    finally:
        group.end()


def is_sparsemat(node) -> bool:
    return node is not None and node.knob(MARKER) is not None


# ---- knobs -> settings, internal nodes -> paths (main thread) ----------------------------------------

def keyframes_text(group) -> str:
    """The keyframes knob as typed ("" when unset, or on a node saved by an older SparseMat, which has none)."""
    knob = group.knob("keyframes")
    return "" if knob is None else knob.value().strip()


def settings(group) -> core.Settings:
    keyframes = keyframes_text(group)
    return core.Settings(
        address=group["address"].value().strip() or host.default_address(),
        checkpoint=group["checkpoint"].value().strip(),
        temporal=bool(group["temporal"].value()),
        keyframe_interval=max(0, int(group["keyframe_interval"].value())),
        colourspace=group["colourspace"].value().strip() or host.DEFAULT_COLOURSPACE,
        channel=core.output_channel(group["output"].value(), group["layer"].value()),
        timeout=float(group["timeout"].value()),
        trimap_dilation=int(group["trimap_dilation"].value()),  # the engine says when it is out of range
        foreground=bool(group["foreground"].value()),
        keyframes=tuple(host.parse_frames(keyframes, 0, -1)) if keyframes else ())


def input_range(group) -> tuple[int, int]:
    source = group.input(0)
    if source is not None:
        return int(source.firstFrame()), int(source.lastFrame())
    root = nuke.root()
    return int(root["first_frame"].value()), int(root["last_frame"].value())


def _ensure_layer(channel: str) -> None:
    layer = channel.split(".")[0]
    if layer != "rgba" and layer not in nuke.layers():
        try:
            nuke.Layer(layer, [channel])
        except (TypeError, RuntimeError):  # Nuke versions whose Layer cannot be constructed from Python
            nuke.tcl(f"add_layer {{{layer} {channel}}}")


def sync(group) -> tuple[core.Settings, core.Paths]:
    """Read the knobs and point the internal nodes at this session's files and the chosen channel."""
    values = settings(group)
    files = core.paths(nuke.root().name(), group.fullName())
    group.node(SOURCE_WRITE)["file"].setValue(files.source)
    group.node(PRIOR_WRITE)["file"].setValue(files.prior)
    group.node(TRIMAP_WRITE)["file"].setValue(files.trimap)
    group.node(CLEAN_PLATE_WRITE)["file"].setValue(files.clean_plate)
    if group.node(KEYFRAME_WRITE) is not None:  # absent from nodes saved by an older SparseMat
        group.node(KEYFRAME_WRITE)["file"].setValue(files.keyframes)
    read = group.node(ALPHA_READ)
    first, last = input_range(group)
    if read["file"].value() != files.alpha:
        read["file"].setValue(files.alpha)
    if (int(read["first"].value()), int(read["last"].value())) != (first, last):
        read["first"].setValue(first)
        read["last"].setValue(last)
    _ensure_layer(values.channel)
    copy = group.node(COPY)
    if copy["to0"].value() != values.channel:
        copy["to0"].setValue(values.channel)
    foreground = group.node(FOREGROUND_COPY)
    if foreground["disable"].value() == values.foreground:
        foreground["disable"].setValue(not values.foreground)
    with _lock:
        first_use = group.fullName() not in _failed
        _failed.setdefault(group.fullName(), set())
    if first_use:  # errors saved with the script belong to another session: this one starts clean
        check = group.node(ASSERT)
        check["expression"].setExpression("1")
        check["message"].setValue("")
    return values, files


def knob_changed() -> None:
    """The node's knobChanged: show the output channel at once (everything else applies at the next matte)."""
    knob, group = nuke.thisKnob(), nuke.thisNode()
    if knob is not None and knob.name() in ("output", "layer"):
        try:
            channel = core.output_channel(group["output"].value(), group["layer"].value())
        except host.MatteError as exc:
            group["status"].setValue(f"error: {exc}")
            return
        _ensure_layer(channel)
        group.node(COPY)["to0"].setValue(channel)


# ---- showing results (main thread) ---------------------------------------------------------------

def show_success(name: str, frame: int, text: str) -> None:
    group = nuke.toNode(name)
    if group is None:
        return
    group["status"].setValue(text)
    with _lock:
        failed = _failed.setdefault(name, set())
        changed = frame in failed
        failed.discard(frame)
    if changed:
        group.node(ASSERT)["expression"].setExpression(core.assert_expression(failed))
    reload = group.node(ALPHA_READ).knob("reload")
    if reload is not None:
        reload.execute()


def show_failure(name: str, frame: int, message: str, dialog: bool) -> None:
    """The node errors on the frame with the engine's message; in the GUI a dialog says it too."""
    group = nuke.toNode(name)
    if group is not None:
        with _lock:
            failed = _failed.setdefault(name, set())
            failed.add(frame)
            expression = core.assert_expression(failed)
        check = group.node(ASSERT)
        check["message"].setValue(message)
        check["expression"].setExpression(expression)
    show_error(name, message, dialog)


def show_error(name: str, message: str, dialog: bool) -> None:
    """The status line (and in the GUI a dialog) says what is wrong; no frame is marked failed."""
    show_status(name, f"error: {message}")
    if dialog and nuke.GUI:
        nuke.message(message)


def show_status(name: str, text: str) -> None:
    group = nuke.toNode(name)
    if group is not None:
        group["status"].setValue(text)
