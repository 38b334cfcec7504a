"""The SparseMat node in Nuke: a Group built from Python, its buttons, and the render callback.

Thin glue over ``core``: it reads knobs, renders the node's input through the
internal Write, points the internal Read at the alpha, and shows status and
errors. How pixels move (Python has no bulk pixel access in Nuke):

    Source -> SourceWrite (EXR, half, raw) -> [engine] -> alpha EXR -> AlphaRead (raw)
    Source ----------------------------------------------------------> AlphaCopy -> EngineError (Assert) -> Output
    Prior  -> PriorWrite (EXR, alpha, float, raw) -> [engine, as the prior]

Threads: Nuke's API is used only in the main thread. The buttons read the knobs
there and start a worker thread; the worker asks the main thread to render each
input frame (``nuke.executeInMainThread``), talks to the engine itself, and
reports back through ``nuke.executeInMainThread``. The main thread never waits on
the socket. Command-line and farm renders matte each frame synchronously from a
``nuke.addBeforeFrameRender`` callback, before the downstream Write computes it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import nuke

from . import __version__, core

MARKER = "sparsemat_version"  # hidden knob that marks a Group as a SparseMat node
SOURCE_WRITE, PRIOR_WRITE, ALPHA_READ, COPY, ASSERT = "SourceWrite", "PriorWrite", "AlphaRead", "AlphaCopy", "EngineError"

_lock = threading.Lock()
_failed: dict[str, set] = {}  # node full name -> frames whose matte failed (the Assert fails on them)
_jobs: dict[str, threading.Thread] = {}  # node full name -> the worker matting it
_local = threading.local()  # .internal: we are executing our own Writes; the render callback ignores them
_suppressed = threading.Event()  # set by render.render(), which mattes before it executes each Write
_registered = False


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
        address = core.default_address()
    except ImportError:  # msgpack missing: the node still builds, and says what to install when used
        address = ""
    command = "import sparsemat_nuke.node\nsparsemat_nuke.node.{}(nuke.thisNode())"
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
    _knob(group, nuke.String_Knob("colourspace", "input colourspace"), core.DEFAULT_COLOURSPACE,
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
        prior = nuke.nodes.Input(name="Prior")
        _set(prior, number=1)
        write = nuke.nodes.Write(name=SOURCE_WRITE)
        _set(write, file_type="exr", datatype="16 bit half", compression="none", channels="rgb", raw=True,
             disable=True)
        write.setInput(0, source)
        prior_write = nuke.nodes.Write(name=PRIOR_WRITE)
        _set(prior_write, file_type="exr", datatype="32 bit float", compression="none", channels="alpha",
             raw=True, disable=True)
        prior_write.setInput(0, prior)
        read = nuke.nodes.Read(name=ALPHA_READ)
        _set(read, raw=True, on_error="black", before="black", after="black")
        copy = nuke.nodes.Copy(name=COPY)
        _set(copy, from0="rgba.alpha", to0="rgba.alpha")
        copy.setInput(0, source)  # B: the plate passes through
        copy.setInput(1, read)  # A: the matte
        check = nuke.nodes.Assert(name=ASSERT)
        _set(check, expression="1", message="")
        check.setInput(0, copy)
        output = nuke.nodes.Output()
        output.setInput(0, check)
    finally:
        group.end()


def is_sparsemat(node) -> bool:
    return node is not None and node.knob(MARKER) is not None


# ---- knobs -> settings, internal nodes -> paths (main thread) ----------------------------------------

def settings(group) -> core.Settings:
    return core.Settings(
        address=group["address"].value().strip() or core.default_address(),
        checkpoint=group["checkpoint"].value().strip(),
        temporal=bool(group["temporal"].value()),
        keyframe_interval=max(0, int(group["keyframe_interval"].value())),
        colourspace=group["colourspace"].value().strip() or core.DEFAULT_COLOURSPACE,
        channel=core.output_channel(group["output"].value(), group["layer"].value()),
        timeout=float(group["timeout"].value()))


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
    with _lock:
        first_use = group.fullName() not in _failed
        _failed.setdefault(group.fullName(), set())
    if first_use:  # errors saved with the script belong to another session: this one starts clean
        check = group.node(ASSERT)
        check["expression"].setValue("1")
        check["message"].setValue("")
    return values, files


def knob_changed() -> None:
    """The node's knobChanged: show the output channel at once (everything else applies at the next matte)."""
    knob, group = nuke.thisKnob(), nuke.thisNode()
    if knob is not None and knob.name() in ("output", "layer"):
        try:
            channel = core.output_channel(group["output"].value(), group["layer"].value())
        except core.MatteError as exc:
            group["status"].setValue(f"error: {exc}")
            return
        _ensure_layer(channel)
        group.node(COPY)["to0"].setValue(channel)


def _execute(write, frame: int, view: str) -> None:
    """Render one frame of an internal Write (kept disabled otherwise, so Render All and nuke -x skip it)."""
    write["disable"].setValue(False)
    _local.internal = True
    try:
        nuke.execute(write, frame, frame, 1, [view])
    finally:
        _local.internal = False
        write["disable"].setValue(True)


def render_inputs(name: str, files: core.Paths, frame: int, view: str) -> tuple[str, str | None, str]:
    """(plate file, prior file or None, alpha file) of one frame, the inputs rendered now (main thread).
    ``files``: what ``sync`` returned when the work began (it pointed the internal nodes there)."""
    group = nuke.toNode(name)
    if group is None:
        raise core.MatteError(f"the node {name} no longer exists")
    if group.input(0) is None:
        raise core.MatteError(f"{name}: nothing is connected to the Source input")
    source = core.frame_path(files.source, frame, view)
    os.makedirs(os.path.dirname(source), exist_ok=True)
    _execute(group.node(SOURCE_WRITE), frame, view)
    prior = None
    if group.input(1) is not None:
        _execute(group.node(PRIOR_WRITE), frame, view)
        prior = core.frame_path(files.prior, frame, view)
    return source, prior, core.frame_path(files.alpha, frame, view)


# ---- showing results (main thread) ---------------------------------------------------------------

def _show_success(name: str, frame: int, text: str) -> None:
    group = nuke.toNode(name)
    if group is None:
        return
    group["status"].setValue(text)
    with _lock:
        failed = _failed.setdefault(name, set())
        changed = frame in failed
        failed.discard(frame)
    if changed:
        group.node(ASSERT)["expression"].setValue(core.assert_expression(failed))
    reload = group.node(ALPHA_READ).knob("reload")
    if reload is not None:
        reload.execute()


def _show_failure(name: str, frame: int, message: str, dialog: bool) -> None:
    """The node errors on the frame with the engine's message; in the GUI a dialog says it too."""
    group = nuke.toNode(name)
    if group is not None:
        with _lock:
            failed = _failed.setdefault(name, set())
            failed.add(frame)
            expression = core.assert_expression(failed)
        check = group.node(ASSERT)
        check["message"].setValue(message)
        check["expression"].setValue(expression)
    _show_error(name, message, dialog)


def _show_error(name: str, message: str, dialog: bool) -> None:
    """The status line (and in the GUI a dialog) says what is wrong; no frame is marked failed."""
    _show_status(name, f"error: {message}")
    if dialog and nuke.GUI:
        nuke.message(message)


def _show_status(name: str, text: str) -> None:
    group = nuke.toNode(name)
    if group is not None:
        group["status"].setValue(text)


# ---- the buttons: work in a worker thread -----------------------------------------------------------------

def matte_this_frame(group=None):
    group = group or nuke.thisNode()
    return _start(group, [int(nuke.frame())], progress=False)


def matte_frame_range(group=None):
    group = group or nuke.thisNode()
    first, last = input_range(group)
    try:
        frames = core.parse_frames(group["frames"].value(), first, last)
    except core.MatteError as exc:  # a typo in the knob: nothing was matted, so no frame has failed
        _show_error(group.fullName(), f"{group.fullName()}: {exc}", dialog=True)
        return None
    return _start(group, frames, progress=True)


def _start(group, frames: list, progress: bool):
    """Start the worker for ``frames``; returns the thread (None when nothing was started)."""
    name = group.fullName()
    if not frames:
        group["status"].setValue("no frames to matte")
        return None
    try:
        values, files = sync(group)
    except core.MatteError as exc:
        _show_failure(name, frames[0], str(exc), dialog=True)
        return None
    script, views, first = nuke.root().name(), list(nuke.views()), input_range(group)[0]
    thread = threading.Thread(target=_run_job, args=(name, script, values, files, frames, views, first, progress),
                              name=f"sparsemat-{name}", daemon=True)
    with _lock:
        running = _jobs.get(name)
        busy = running is not None and running.is_alive()
        if not busy:
            _jobs[name] = thread
    if busy:  # the dialog is modal: never show it while holding the lock
        nuke.message(f"{name} is already matting; wait for it, or cancel it in the progress window")
        return None
    group["status"].setValue(f"matting {len(frames)} frame(s)...")
    thread.start()
    return thread


def _in_main_thread(function, *args) -> Future:
    """Run ``function`` in Nuke's main thread; a Future of its result (the caller keeps working meanwhile)."""
    future: Future = Future()

    def call():
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the worker, which reports it
            future.set_exception(exc)

    nuke.executeInMainThread(call)
    return future


def _discard(future: Future | None) -> None:
    """Wait for a render the worker will not use, and remove its files."""
    if future is None:
        return
    try:
        source, prior, _ = future.result()
    except Exception:
        return
    core.remove_files(source, prior)


def _run_job(name: str, script: str, values: core.Settings, files: core.Paths, frames: list, views: list,
             first: int, progress: bool) -> None:
    """The worker: renders come from the main thread, one frame ahead; the engine is called from here."""
    task = nuke.ProgressTask(f"SparseMat: {name}") if progress else None
    pending = None
    try:
        for view in views:
            stream = core.stream_id(script, name, view)
            work = core.with_preroll(frames, values, core.tracker.last(stream, values), first)
            pending = _in_main_thread(render_inputs, name, files, work[0], view)
            for index, frame in enumerate(work):
                if task is not None:
                    if task.isCancelled():
                        _discard(pending)
                        pending = None
                        core.tracker.matted(stream, values, None)
                        nuke.executeInMainThread(_show_status, (name, f"cancelled before frame {frame}"))
                        return
                    task.setMessage(f"frame {frame} ({view})" if len(views) > 1 else f"frame {frame}")
                try:
                    source, prior, alpha = pending.result()
                    pending = (_in_main_thread(render_inputs, name, files, work[index + 1], view)
                               if index + 1 < len(work) else None)
                    stats = core.matte(values, stream, frame, source, alpha, prior)
                except Exception as exc:
                    _discard(pending)
                    pending = None
                    core.tracker.matted(stream, values, None)
                    message = f"{name}, frame {frame}: {core.describe(exc, values.address)}"
                    nuke.executeInMainThread(_show_failure, (name, frame, message, True))
                    return
                core.tracker.matted(stream, values, frame)
                nuke.executeInMainThread(_show_success, (name, frame, core.status_line(frame, stats)))
                if task is not None:
                    task.setProgress(int(100 * (index + 1) / len(work)))
    finally:
        _discard(pending)
        if task is not None:
            del task  # closes the progress window


def job(group):
    """The worker thread matting ``group`` (or the last one that did), for scripts that wait on it."""
    with _lock:
        return _jobs.get(group.fullName())


# ---- renders: matte before each frame of a downstream Write ---------------------------------------------

def upstream(node) -> list:
    """Enabled SparseMat nodes feeding ``node``, those further upstream first (they must be matted first)."""
    found, seen = [], set()
    stack = [(node, False)]
    while stack:
        current, expanded = stack.pop()
        if expanded:
            if current is not node and is_sparsemat(current) and not current["disable"].value():
                found.append(current)
            continue
        stack.append((current, True))
        for index in reversed(range(current.inputs())):
            above = current.input(index)
            if above is not None and above.fullName() not in seen:
                seen.add(above.fullName())
                stack.append((above, False))
    return found


def matte_now(group, frame: int, view: str = "main") -> dict:
    """Matte one frame synchronously in this thread (renders: there is no UI to keep alive).
    Pre-rolls from the last keyframe when the stream does not continue. Raises RuntimeError with
    the engine's message, after making the node error on that frame."""
    name = group.fullName()
    try:
        values, files = sync(group)
    except core.MatteError as exc:
        _show_failure(name, frame, str(exc), dialog=False)
        raise RuntimeError(str(exc)) from exc
    stream = core.stream_id(nuke.root().name(), name, view)
    stats: dict = {}
    for current in core.with_preroll([frame], values, core.tracker.last(stream, values), input_range(group)[0]):
        try:
            source, prior, alpha = render_inputs(name, files, current, view)
            stats = core.matte(values, stream, current, source, alpha, prior)
        except Exception as exc:
            core.tracker.matted(stream, values, None)
            message = f"{name}, frame {current}: {core.describe(exc, values.address)}"
            _show_failure(name, frame, message, dialog=False)
            raise RuntimeError(message) from exc
        core.tracker.matted(stream, values, current)
        _show_success(name, current, core.status_line(current, stats))
    return stats


def _this_view() -> str:
    try:
        return nuke.thisView() or "main"
    except Exception:  # outside a render context
        return "main"


def before_frame_render() -> None:
    """``nuke.addBeforeFrameRender`` callback: matte this frame of every SparseMat upstream of the Write."""
    if getattr(_local, "internal", False) or _suppressed.is_set():
        return
    write = nuke.thisNode()
    frame, view = int(nuke.frame()), _this_view()
    for group in upstream(write):
        matte_now(group, frame, view)


def register_callbacks() -> None:
    """Called from init.py, in every mode (GUI, nuke -t, nuke -x, farm)."""
    global _registered
    if not _registered:
        nuke.addBeforeFrameRender(before_frame_render, nodeClass="Write")
        _registered = True
