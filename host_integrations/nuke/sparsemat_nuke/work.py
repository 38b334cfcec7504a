"""The SparseMat node's work in Nuke: the buttons, renders, and the render callback.

What Nuke allows decides the shape (Foundry's documentation, and public Nuke tools):

- ``nuke.execute`` and node edits are refused inside render callbacks ("I'm already executing
  something else"). So nothing here renders or edits from a callback: frames are matted
  before the Writes render, either by ``render.py`` (``nuke -t``, the farm's and the command
  line's path: matte a frame, then render it) or by the GUI's "Render with SparseMat"
  (matte the range in a worker, then render the Writes from the main thread). The
  ``beforeFrameRender`` callback only checks that each frame it needs has been matted, and
  stops a plain render (``nuke -x``, Render All) with a message saying how to render instead.
- Nuke's API is used only in the main thread. In the GUI, the buttons read the knobs there and
  start a worker thread; the worker asks the main thread to render each input frame
  (``nuke.executeInMainThread``), talks to the engine itself, and reports back the same way,
  so the main thread never waits on the socket. In terminal mode (``nuke -t``, no event loop to
  run those calls) the buttons' functions do the same work in the calling thread, so a script
  that calls ``matte_frame_range(group)`` and then waits on ``job(group)`` completes.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future

import nuke

from sparsemat.plugin import host

from . import core
from .node import (ALPHA_READ, GUIDES, KEYFRAME_WRITE, KEYFRAMES_INPUT, SOURCE_WRITE, input_range, is_sparsemat,
                   keyframes_text, show_error, show_failure, show_status, show_success, sync)

_lock = threading.Lock()
_jobs: dict[str, object] = {}  # node full name -> the worker matting it (or the finished terminal-mode job)
_registered = False
tracker = host.StreamTracker()  # the last frame each stream matted in this process


class _Finished:
    """What ``job`` returns for work done in the caller's thread (terminal mode): already over."""

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        return None


# ---- rendering the node's inputs (main thread, never in a render callback) ---------------------------------

def _execute(write, frame: int, view: str) -> None:
    """Render one frame of an internal Write (kept disabled otherwise, so Render All and nuke -x skip it)."""
    write["disable"].setValue(False)
    try:
        nuke.execute(write, frame, frame, 1, [view])
    finally:
        write["disable"].setValue(True)


def render_inputs(name: str, files: core.Paths, frame: int, view: str) -> core.Rendered:
    """One frame's files, the inputs rendered now (main thread); a guide input (Prior, Trimap) only
    when connected. ``files``: what ``sync`` returned when the work began (it pointed the internal
    nodes there)."""
    group = nuke.toNode(name)
    if group is None:
        raise host.MatteError(f"the node {name} no longer exists")
    if group.input(0) is None:
        raise host.MatteError(f"{name}: nothing is connected to the Source input")
    source = core.frame_path(files.source, frame, view)
    os.makedirs(os.path.dirname(source), exist_ok=True)
    _execute(group.node(SOURCE_WRITE), frame, view)
    guides = []
    for (number, _, write, _), pattern in zip(GUIDES, (files.prior, files.trimap, files.clean_plate)):
        if group.input(number) is None:
            guides.append(None)
            continue
        _execute(group.node(write), frame, view)
        guides.append(core.frame_path(pattern, frame, view))
    return core.Rendered(source, *guides, core.frame_path(files.alpha, frame, view))


def render_for_keyframes(name: str, files: core.Paths, frame: int, view: str, keyframe: bool) -> tuple:
    """One frame of a keyframe-guided matte (main thread): its plate, and on a keyframe the Keyframes
    input's alpha; (plate file, keyframe matte file or None)."""
    group = nuke.toNode(name)
    if group is None:
        raise host.MatteError(f"the node {name} no longer exists")
    if group.input(0) is None:
        raise host.MatteError(f"{name}: nothing is connected to the Source input")
    if group.input(KEYFRAMES_INPUT) is None:
        raise host.MatteError(f"{name}: the keyframes knob is set, but nothing is connected to the Keyframes input")
    connected = [guide for number, guide, _, _ in GUIDES if group.input(number) is not None]
    if connected:
        raise host.MatteError(f"{name}: the {connected[0]} input cannot be combined with keyframes (the keyframes' "
                              f"mattes, carried, are each frame's prior); disconnect it or clear the keyframes knob")
    if group.node(KEYFRAME_WRITE) is None:
        raise host.MatteError(f"{name} was made by an older SparseMat, without the Keyframes input: create a new "
                              f"SparseMat node to use keyframes")
    source = core.frame_path(files.source, frame, view)
    os.makedirs(os.path.dirname(source), exist_ok=True)
    _execute(group.node(SOURCE_WRITE), frame, view)
    if not keyframe:
        return source, None
    _execute(group.node(KEYFRAME_WRITE), frame, view)
    return source, core.frame_path(files.keyframes, frame, view)


def _in_main_thread(function, *args) -> Future:
    """Run ``function`` in Nuke's main thread; a Future of its result (the caller keeps working meanwhile).
    In terminal mode there is no event loop to run it later: it runs now, here."""
    future: Future = Future()

    def call():
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the worker, which reports it
            future.set_exception(exc)

    if nuke.GUI:
        nuke.executeInMainThread(call)
    else:
        call()
    return future


def _later(function, *args) -> None:
    """``function(*args)`` in the main thread: queued from a worker in the GUI, at once otherwise."""
    if nuke.GUI:
        nuke.executeInMainThread(function, args)
    else:
        function(*args)


# ---- the buttons ----------------------------------------------------------------------------------------

def matte_this_frame(group=None):
    group = group or nuke.thisNode()
    return _start([group], [int(nuke.frame())], progress=False)


def matte_frame_range(group=None):
    group = group or nuke.thisNode()
    first, last = input_range(group)
    try:
        frames = host.parse_frames(group["frames"].value(), first, last)
    except host.MatteError as exc:  # a typo in the knob: nothing was matted, so no frame has failed
        show_error(group.fullName(), f"{group.fullName()}: {exc}", dialog=True)
        return None
    return _start([group], frames, progress=True)


def render_with_mattes(writes=None, frames=None):
    """The GUI's "Render with SparseMat": every SparseMat node upstream of the Writes (the selected
    ones, else every enabled one) mattes the frames (the script's range by default), then the
    Writes render them, from the main thread. Returns the worker (or the finished job)."""
    if writes is None:
        writes = [n for n in nuke.selectedNodes() if n.Class() == "Write"] or \
                 [n for n in nuke.allNodes("Write") if not n["disable"].value()]
    if frames is None:
        root = nuke.root()
        frames = list(range(int(root["first_frame"].value()), int(root["last_frame"].value()) + 1))
    groups = _upstream_of(writes)

    def render_writes():
        for write in writes:
            nuke.execute(write, frames[0], frames[-1], 1, list(nuke.views()))

    if not groups:
        render_writes()
        return _Finished()
    return _start(groups, frames, progress=True, then=render_writes)


def _start(groups: list, frames: list, progress: bool, then=None):
    """Matte ``frames`` of each of ``groups`` in a worker (in the caller's thread in terminal mode),
    then call ``then`` in the main thread if every frame was matted; returns the worker, or None
    when nothing was started."""
    names = [group.fullName() for group in groups]
    if not frames:
        show_status(names[0], "no frames to matte")
        return None
    plans = []
    for group in groups:
        try:
            plans.append((group.fullName(), *sync(group), input_range(group)[0]))
        except host.MatteError as exc:
            show_failure(group.fullName(), frames[0], str(exc), dialog=True)
            return None
    script, views = nuke.root().name(), list(nuke.views())
    work = (plans, script, frames, views, progress, then)
    if not nuke.GUI:
        _run_job(*work)
        with _lock:
            for name in names:
                _jobs[name] = _Finished()
        return _jobs[names[0]]
    thread = threading.Thread(target=_run_job, args=work, name=f"sparsemat-{names[0]}", daemon=True)
    with _lock:
        busy = [name for name in names if name in _jobs and _jobs[name].is_alive()]
        if not busy:
            for name in names:
                _jobs[name] = thread
    if busy:  # the dialog is modal: never show it while holding the lock
        nuke.message(f"{busy[0]} is already matting; wait for it, or cancel it in the progress window")
        return None
    for name in names:
        show_status(name, f"matting {len(frames)} frame(s)...")
    thread.start()
    return thread


def _discard(future: Future | None) -> None:
    """Wait for a render the worker will not use, and remove its files."""
    if future is None:
        return
    try:
        rendered = future.result()
    except Exception:
        return
    host.remove_files(*rendered.inputs())


def _run_job(plans: list, script: str, frames: list, views: list, progress: bool, then) -> None:
    """The worker: renders come from the main thread, one frame ahead; the engine is called from here."""
    task = nuke.ProgressTask(f"SparseMat: {plans[0][0]}") if progress else None
    try:
        for name, values, files, first in plans:
            for view in views:
                label = f"{name}, {view}" if len(views) > 1 else name
                if not _matte_view(task, label, name, script, values, files, frames, view, first):
                    return
        if then is not None:
            _later(then)
    finally:
        if task is not None:
            del task  # closes the progress window


def _matte_view(task, label, name, script, values, files, frames, view, first) -> bool:
    """One node's frames in one view, pre-rolled from their keyframe; False when it failed or was cancelled."""
    stream = core.stream_id(script, name, view)
    if values.keyframes:
        tracker.matted(stream, values, None)  # frames matted from keyframes do not continue the engine's stream
        return _from_keyframes(task, label, name, values, files, frames, view) is None
    work = host.with_preroll(frames, values, tracker.last(stream, values), first)
    pending = _in_main_thread(render_inputs, name, files, work[0], view)
    try:
        for index, frame in enumerate(work):
            if task is not None:
                if task.isCancelled():
                    tracker.matted(stream, values, None)
                    _later(show_status, name, f"cancelled before frame {frame}")
                    return False
                task.setMessage(f"{label}: frame {frame}")
            try:
                rendered = pending.result()
                pending = (_in_main_thread(render_inputs, name, files, work[index + 1], view)
                           if index + 1 < len(work) else None)
                stats = host.matte(values, stream, frame, rendered.source, rendered.alpha, **rendered.guides())
            except Exception as exc:
                tracker.matted(stream, values, None)
                message = f"{name}, frame {frame}: {host.describe(exc, values.address)}"
                _later(show_failure, name, frame, message, True)
                return False
            tracker.matted(stream, values, frame)
            _later(show_success, name, frame, host.status_line(frame, stats))
            if task is not None:
                task.setProgress(int(100 * (index + 1) / len(work)))
        return True
    finally:
        _discard(pending)


def _input_range_of(name: str) -> tuple[int, int]:
    group = nuke.toNode(name)
    if group is None:
        raise host.MatteError(f"the node {name} no longer exists")
    return input_range(group)


def _from_keyframes(task, label, name, values, files, frames, view) -> str | None:
    """One node's frames in one view from its Keyframes input, ``host.KEYFRAME_BATCH`` at a time (the
    rendered plates of a batch are removed before the next is rendered). The first failure's
    message (shown on the node), or None."""
    cancelled = (lambda: False) if task is None else task.isCancelled
    keyframes = sorted(values.keyframes)
    failed: dict = {}
    started = time.perf_counter()
    try:
        first, last = _in_main_thread(_input_range_of, name).result()
        host.keyframe_plates(frames, keyframes, first, last)  # a keyframe outside the range: before any render
        if values.foreground:
            raise host.MatteError("'foreground in rgb' is not available with keyframes yet: turn it off, or matte "
                                  "without keyframes")
        for offset in range(0, len(frames), host.KEYFRAME_BATCH):
            batch = frames[offset:offset + host.KEYFRAME_BATCH]

            def on_frame(done, total, text, offset=offset):
                if task is not None:
                    task.setMessage(f"{label}: {text}")
                    task.setProgress(int(100 * (offset + done) / len(frames)))

            failed.update(_keyframe_batch(task, label, name, values, files, batch, keyframes, (first, last), view,
                                          on_frame, cancelled))
    except Exception as exc:
        if str(exc) == "cancelled":
            _later(show_status, name, "cancelled")
            return "cancelled"
        message = f"{name}: {host.describe(exc, values.address)}"
        _later(show_failure, name, frames[0], message, True)
        return message
    seconds = (time.perf_counter() - started) / len(frames)
    for frame in frames:
        if frame not in failed:
            _later(show_success, name, frame, f"frame {frame}: from keyframes, {seconds:.2f} s a frame")
    messages = [f"{name}, frame {frame}: {message}" for frame, message in sorted(failed.items())]
    for (frame, _), message in zip(sorted(failed.items()), messages):
        _later(show_failure, name, frame, message, len(messages) == 1)
    return messages[0] if messages else None


def _keyframe_batch(task, label, name, values, files, batch, keyframes, bounds, view, on_frame,
                    cancelled) -> dict:
    """Render the plates ``batch`` needs (its frames, the keyframes either side of each) and the
    Keyframes input on those keyframes, from the main thread; matte the batch; remove the renders.
    The batch's failed frames -> why."""
    rendered: list = []
    try:
        keyframe_mattes = {}
        for frame in host.keyframe_plates(batch, keyframes, *bounds):
            if cancelled():
                raise host.MatteError("cancelled")
            if task is not None:
                task.setMessage(f"{label}: rendering frame {frame}")
            source, keyframe = _in_main_thread(render_for_keyframes, name, files, frame, view,
                                               frame in keyframes).result()
            rendered += [source, keyframe]
            if keyframe is not None:
                keyframe_mattes[frame] = keyframe
        return host.matte_from_keyframes(values, core.in_view(files.source, view), keyframe_mattes,
                                         core.in_view(files.alpha, view), batch, on_frame, cancelled)
    finally:
        host.remove_files(*rendered)


def keyframed(group) -> bool:
    """Whether the node's frames come from its Keyframes input (its keyframes knob is set)."""
    return bool(keyframes_text(group))


def matte_from_keyframes_now(group, frames: list, view: str = "main") -> None:
    """``frames`` of a node whose keyframes knob is set, synchronously in this thread (``nuke -t``);
    RuntimeError with the first failure's message."""
    name = group.fullName()
    try:
        values, files = sync(group)
    except host.MatteError as exc:
        show_failure(name, frames[0], str(exc), dialog=False)
        raise RuntimeError(str(exc)) from exc
    tracker.matted(core.stream_id(nuke.root().name(), name, view), values, None)
    message = _from_keyframes(None, name, name, values, files, frames, view)
    if message is not None:
        raise RuntimeError(message)


def job(group):
    """The worker matting ``group`` (or the last one that did), for scripts that wait on it."""
    with _lock:
        return _jobs.get(group.fullName())


# ---- renders ------------------------------------------------------------------------------------------------

def upstream(node) -> list:
    """Enabled SparseMat nodes feeding ``node``, those further upstream first (they must be matted
    first), searched through Groups and gizmos too: inside a group from its Output node, and from
    a group's Input nodes on to the group's own inputs."""
    found, seen = [], set()
    stack = [(node, False)]
    while stack:
        current, expanded = stack.pop()
        if expanded:
            if current is not node and is_sparsemat(current) and not current["disable"].value():
                found.append(current)
            continue
        stack.append((current, True))
        for above in reversed(_feeding(current)):
            if above is not None and above.fullName() not in seen:
                seen.add(above.fullName())
                stack.append((above, False))
    return found


def _feeding(node) -> list:
    """The nodes whose output ``node``'s output is computed from."""
    if node.Class() == "Input":  # inside a group: what feeds the group's input of that number
        parent = _parent(node)
        return [] if parent is None else [parent.input(int(node["number"].value()))]
    if hasattr(node, "output") and not is_sparsemat(node):  # a Group or gizmo: what its Output shows
        inner = node.output()
        if inner is not None:
            return [inner]
    return [node.input(index) for index in range(node.inputs())]


def _parent(node):
    """The Group holding ``node`` (None at the top of the script): Nuke names nodes by their path."""
    path = node.fullName().rsplit(".", 1)
    return nuke.toNode(path[0]) if len(path) == 2 else None


def _upstream_of(writes: list) -> list:
    groups = {}
    for write in writes:
        for group in upstream(write):
            groups.setdefault(group.fullName(), group)
    return list(groups.values())


def matte_now(group, frame: int, view: str = "main") -> dict:
    """Matte one frame synchronously in this thread (``nuke -t``: no UI to keep alive, never from a
    render callback). Pre-rolls from the last keyframe when the stream does not continue. Raises
    RuntimeError with the engine's message, after making the node error on that frame."""
    name = group.fullName()
    try:
        values, files = sync(group)
    except host.MatteError as exc:
        show_failure(name, frame, str(exc), dialog=False)
        raise RuntimeError(str(exc)) from exc
    if values.keyframes:
        matte_from_keyframes_now(group, [frame], view)
        return {}
    stream = core.stream_id(nuke.root().name(), name, view)
    stats: dict = {}
    for current in host.with_preroll([frame], values, tracker.last(stream, values), input_range(group)[0]):
        try:
            rendered = render_inputs(name, files, current, view)
            stats = host.matte(values, stream, current, rendered.source, rendered.alpha, **rendered.guides())
        except Exception as exc:
            tracker.matted(stream, values, None)
            message = f"{name}, frame {current}: {host.describe(exc, values.address)}"
            show_failure(name, frame, message, dialog=False)
            raise RuntimeError(message) from exc
        tracker.matted(stream, values, current)
        show_success(name, current, host.status_line(current, stats))
    return stats


def _this_view() -> str:
    try:
        return nuke.thisView() or "main"
    except Exception:  # outside a render context
        return "main"


def before_frame_render() -> None:
    """``nuke.addBeforeFrameRender`` callback: every SparseMat node upstream of the Write must have
    matted this frame already (nothing can be rendered or changed from here). Our own internal
    Writes are not checked."""
    write = nuke.thisNode()
    if write.fullName().rsplit(".", 1)[-1] in (SOURCE_WRITE, KEYFRAME_WRITE, *(guide[2] for guide in GUIDES)):
        return
    frame, view = int(nuke.frame()), _this_view()
    for group in upstream(write):
        alpha = core.frame_path(group.node(ALPHA_READ)["file"].value(), frame, view)
        if not os.path.isfile(alpha):
            raise RuntimeError(f"{group.fullName()} has no matte for frame {frame} ({view}): render with SparseMat > "
                               f"Render with SparseMat, press 'matte frame range' first, or on the command line "
                               f"nuke -t <plugin folder>/sparsemat_nuke/render.py SCRIPT FRAMES")


def register_callbacks() -> None:
    """Called from init.py, in every mode (GUI, nuke -t, nuke -x, farm)."""
    global _registered
    if not _registered:
        nuke.addBeforeFrameRender(before_frame_render, nodeClass="Write")
        _registered = True
