"""The SparseMat Nuke node, driven through a stand-in ``nuke`` module (tests/nuke_standin) against a real engine.

The stand-in renders real EXR files (its Read and Write go through OpenImageIO), so
the node's whole path is exercised: internal Write -> engine -> alpha EXR -> internal
Read -> Copy, with the render callback, the buttons' worker thread and the errors.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli, scaled, write_rgb

STANDIN = REPO / "tests" / "nuke_standin"
INTEGRATION = REPO / "host_integrations" / "nuke"
for _path in (str(STANDIN), str(INTEGRATION)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import nuke  # noqa: E402  (the stand-in)
from sparsemat_nuke import core  # noqa: E402
from sparsemat_nuke import node as sparsemat_node  # noqa: E402
from sparsemat_nuke import render as sparsemat_render  # noqa: E402
from sparsemat_nuke import work as sparsemat_work  # noqa: E402

from sparsemat.plugin import exr, host  # noqa: E402
from sparsemat.plugin.client import EngineClient  # noqa: E402

KEYFRAMES = 2
FRAMES = range(1, 6)


# ---- fixtures: an engine, a plate, the CLI's mattes of it ----------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def scratch(tmp_path_factory):
    """The node's session folder under a test folder, and the stand-in's session reset after the module."""
    folder = tmp_path_factory.mktemp("nuke-scratch")
    saved = os.environ.get("SPARSEMAT_NUKE_TEMP")
    os.environ["SPARSEMAT_NUKE_TEMP"] = str(folder)
    host.forget_session_folders()
    yield folder
    host.forget_session_folders()
    if saved is None:
        os.environ.pop("SPARSEMAT_NUKE_TEMP", None)
    else:
        os.environ["SPARSEMAT_NUKE_TEMP"] = saved
    nuke.standin_reset()


def plate_frames(reference, count=5, size=(48, 64)):
    """Distinct small frames cut from the reference clip, made scene-linear and exact in half floats
    (the node renders its input as half, as a Nuke Python node does), so both sides see the same pixels."""
    clip = reference["frames"].astype(np.float32) / 255
    frames = []
    for i in range(count):
        frame = np.ascontiguousarray(clip[i % 3, 8 * (i // 3):][: size[0], : size[1]]) ** 2.2
        frames.append(frame.astype(np.float16).astype(np.float32))
    return frames


@pytest.fixture(scope="module")
def plate(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plate")
    frames = plate_frames(reference)
    for number, frame in zip(FRAMES, frames):
        write_rgb(folder / f"plate.{number:04d}.exr", frame)
    return str(folder / "plate.%04d.exr"), frames


@pytest.fixture(scope="module")
def cli_alphas(engine, plate, tmp_path_factory):
    """``sparsemat matte`` of the plate, same options as the node: temporal, keyframe interval, linear input."""
    folder = tmp_path_factory.mktemp("cli")
    result = run_cli("matte", plate[0], folder / "a.%04d.exr", "--engine", engine, "--temporal",
                     "--keyframe-interval", KEYFRAMES, "--input-colorspace", "linear", "--quiet")
    assert result.returncode == 0, result.stderr
    return {number: exr.read(str(folder / f"a.{number:04d}.exr"), ("A",))[0][..., 0] for number in FRAMES}


def new_session(script: str) -> None:
    """A fresh Nuke session with the integration loaded as Nuke loads it (init.py, then menu.py)."""
    nuke.standin_reset()
    nuke.GUI = True
    sparsemat_work._registered = False
    sparsemat_node._failed.clear()
    sparsemat_work._jobs.clear()
    sparsemat_work.tracker = host.StreamTracker()
    nuke.standin_startup(str(INTEGRATION))
    nuke.root()["name"].setValue(script)


def sparsemat_on(source_pattern: str, address: str, first=1, last=5, **knobs):
    """Read -> SparseMat, created from the menu with the Read selected."""
    read = nuke.nodes.Read(file=source_pattern.replace("%04d", "####"), first=first, last=last)
    read.setSelected(True)
    nuke.menu("Nodes").findItem("SparseMat/SparseMat").invoke()
    read.setSelected(False)
    group = [n for n in nuke.allNodes("Group") if sparsemat_node.is_sparsemat(n)][-1]
    group["address"].setValue(address)
    group["keyframe_interval"].setValue(KEYFRAMES)
    for name, value in knobs.items():
        group[name].setValue(value)
    return group


def output_write(group, folder: Path):
    write = nuke.nodes.Write(file=str(folder / "out.####.exr"), file_type="exr", channels="all",
                             datatype="32 bit float", create_directories=True)
    write.setInput(0, group)
    return write


def wait_for(group, timeout=300.0):
    thread = sparsemat_work.job(group)
    nuke.standin_run_until(lambda: thread is None or not thread.is_alive(), timeout)


def alpha_files(group, frames):
    files = core.paths(nuke.root().name(), group.fullName())
    return {f: exr.read(core.frame_path(files.alpha, f), ("A",))[0][..., 0] for f in frames}


# ---- the node ----------------------------------------------------------------------------------------------

def test_menu_creates_the_node_with_its_knobs_and_internals(tmp_path):
    new_session(str(tmp_path / "menu.nk"))
    assert nuke._callbacks["beforeFrameRender"] == [(sparsemat_work.before_frame_render, (), {}, "Write")]
    group = sparsemat_on(str(tmp_path / "p.%04d.exr"), "ipc:///nowhere")
    assert group.input(0).Class() == "Read"
    for knob in ("address", "checkpoint", "timeout", "temporal", "keyframe_interval", "colourspace", "output",
                 "layer", "frames", "matte_frame", "matte_range", "status"):
        assert group.knob(knob) is not None, knob
    assert group["temporal"].value() is True and group["colourspace"].value() == "linear"
    assert group["output"].values() == ["rgba.alpha", "new layer"] and group["status"].value() == "not matted yet"
    new = nuke.nodes.Group()
    sparsemat_node._add_knobs(new)
    from sparsemat.plugin import runtime

    assert new["address"].value() == runtime.default_address()  # the client's default
    inner = {n.name(): n for n in group.nodes()}
    assert inner["SourceWrite"]["datatype"].value() == "16 bit half" and inner["SourceWrite"]["raw"].value()
    assert inner["SourceWrite"]["disable"].value(), "internal Writes stay disabled outside our own renders"
    assert inner["AlphaRead"]["raw"].value() and inner["AlphaCopy"].input(1) is inner["AlphaRead"]


def assert_outputs_match(folder: Path, cli_alphas, frames=FRAMES) -> None:
    for number in frames:
        pixels, names = exr.read(str(folder / f"out.{number:04d}.exr"))
        assert np.array_equal(pixels[..., names.index("A")], cli_alphas[number]), f"frame {number}"


def test_the_driver_renders_frames_equal_to_sparsemat_matte(engine, plate, cli_alphas, tmp_path):
    """render.py (nuke -t: the farm's and the command line's path) mattes each frame, then renders it."""
    new_session(str(tmp_path / "render.nk"))
    nuke.GUI = False
    group = sparsemat_on(plate[0], engine)
    write = output_write(group, tmp_path / "out")
    sparsemat_render.render([write], list(FRAMES))
    assert_outputs_match(tmp_path / "out", cli_alphas)
    for number, frame in zip(FRAMES, plate[1]):
        pixels, names = exr.read(str(tmp_path / "out" / f"out.{number:04d}.exr"))
        rgb = pixels[..., [names.index(c) for c in "RGB"]]
        assert np.array_equal(rgb, frame), "the plate passes through untouched"
    assert group["status"].value().startswith("frame 5: ") and "active" in group["status"].value()
    assert "cpu" in group["status"].value()
    leftovers = [p.name for p in Path(host.session_folder("nuke", core.SCRATCH_ENVIRONMENT)).rglob("source.*")]
    assert not leftovers, "rendered plates are removed once matted"

    # Into a new layer: the plate's rgba is left alone and the matte lands in <layer>.alpha.
    group["output"].setValue("new layer")
    group["layer"].setValue("matte")
    sparsemat_node.sync(group)
    assert "matte" in nuke.layers()
    image = group._render(3, "main")  # the stand-in's own evaluation, without a render (and its callback)
    assert np.array_equal(image.channels["matte.alpha"], cli_alphas[3])
    assert "rgba.alpha" not in image.channels


def test_a_plain_render_of_unmatted_frames_stops_with_how_to_render(engine, plate, tmp_path):
    """nuke -x, Render All: Nuke refuses renders inside a render, so the callback mattes nothing; it
    stops the render on a frame nothing has matted, saying how to render instead."""
    new_session(str(tmp_path / "plain.nk"))
    group = sparsemat_on(plate[0], engine)
    write = output_write(group, tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"SparseMat1 has no matte for frame 2 \(main\): render with SparseMat"):
        nuke.execute(write, 2, 2)
    assert not (tmp_path / "out" / "out.0002.exr").exists()


def test_a_render_started_from_the_gui_never_nests_execute(engine, plate, cli_alphas, tmp_path):
    """SparseMat > Render with SparseMat: the range is matted in a worker (the plates rendered from the
    main thread, outside any render), then the Writes render, their callback finding every matte."""
    new_session(str(tmp_path / "gui.nk"))
    group = sparsemat_on(plate[0], engine)
    write = output_write(group, tmp_path / "out")
    nuke.root()["first_frame"].setValue(1)
    nuke.root()["last_frame"].setValue(5)
    write.setSelected(True)
    nuke.menu("Nuke").findItem("SparseMat/Render with SparseMat").invoke()
    write.setSelected(False)
    thread = sparsemat_work.job(group)
    nuke.standin_run_until(lambda: not thread.is_alive() and (tmp_path / "out" / "out.0005.exr").exists(), 300)
    assert_outputs_match(tmp_path / "out", cli_alphas)
    assert not nuke.messages


def test_a_script_that_waits_on_a_job_completes(engine, plate, cli_alphas, tmp_path):
    """nuke -t: no event loop runs queued main-thread calls while a script runs (the stand-in runs them
    only in its loop), so a worker waiting on them would never finish; the job runs in the script's
    thread instead."""
    new_session(str(tmp_path / "wait.nk"))
    nuke.GUI = False
    group = sparsemat_on(plate[0], engine, frames="1-3")
    sparsemat_work.matte_frame_range(group)
    waited = sparsemat_work.job(group)
    waited.join(timeout=60)
    assert not waited.is_alive()
    made = alpha_files(group, (1, 2, 3))
    assert all(np.array_equal(made[n], cli_alphas[n]) for n in (1, 2, 3))


def test_a_node_inside_a_group_is_matted(engine, plate, cli_alphas, tmp_path):
    """Read -> Group (a user's, or a gizmo) holding a SparseMat node -> Write: found through the group's
    Output and its Input, and matted before the Write renders."""
    new_session(str(tmp_path / "group.nk"))
    nuke.GUI = False
    read = nuke.nodes.Read(file=plate[0].replace("%04d", "####"), first=1, last=5)
    outer = nuke.nodes.Gizmo(name="Comp")
    with outer:
        inside = nuke.nodes.Input(name="Input1")
        created = sparsemat_node.create()
        created.setInput(0, inside)
        created["address"].setValue(engine)
        created["keyframe_interval"].setValue(KEYFRAMES)
        nuke.nodes.Output().setInput(0, created)
    outer.setInput(0, read)
    write = output_write(outer, tmp_path / "out")
    assert [g.fullName() for g in sparsemat_work.upstream(write)] == ["Comp.SparseMat1"]
    sparsemat_render.render([write], list(FRAMES))
    assert_outputs_match(tmp_path / "out", cli_alphas)


def test_buttons_matte_off_the_main_thread_and_pre_roll(engine, plate, cli_alphas, tmp_path, monkeypatch):
    """'matte frame range' for frame 5 alone, in a new session (a farm chunk, say): frame 4, the last keyframe,
    is matted first, so frame 5 is what the whole-range render gave; no engine call is made on the main thread."""
    new_session(str(tmp_path / "buttons.nk"))
    group = sparsemat_on(plate[0], engine, frames="5")
    calls = []
    for name in ("matte", "hello", "_request_locked"):
        original = getattr(EngineClient, name)

        def observed(self, *args, _original=original, _name=name, **kwargs):
            calls.append((_name, threading.current_thread() is threading.main_thread()))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(EngineClient, name, observed)
    group["matte_range"].execute()  # pressing the button
    assert group["status"].value() == "matting 1 frame(s)..."  # the button returned at once
    wait_for(group)
    assert calls and not any(on_main for _, on_main in calls), calls
    made = alpha_files(group, (4, 5))
    assert np.array_equal(made[4], cli_alphas[4]) and np.array_equal(made[5], cli_alphas[5])
    assert group["status"].value().startswith("frame 5: ")
    worker_updates = [c for c in nuke.standin_main_thread_calls if c[0] == "show_success"]
    assert len(worker_updates) == 2 and all(thread.startswith("sparsemat-") for _, thread in worker_updates)
    task = nuke.ProgressTask.instances[-1]
    assert task.progress == 100 and task.thread.startswith("sparsemat-")
    assert not nuke.messages


def test_cancelling_a_range_stops_before_the_next_frame(engine, plate, tmp_path):
    new_session(str(tmp_path / "cancel.nk"))
    group = sparsemat_on(plate[0], engine, frames="1-5")
    nuke.ProgressTask.standin_cancel_after = 0
    thread = sparsemat_work.matte_frame_range(group)
    wait_for(group)
    assert not thread.is_alive() and group["status"].value() == "cancelled before frame 1"
    assert not list(Path(host.session_folder("nuke", core.SCRATCH_ENVIRONMENT)).rglob("source.*")), "the frame rendered ahead is removed"


def test_the_command_line_driver_mattes_then_renders_every_view(engine, plate, cli_alphas, tmp_path):
    new_session(str(tmp_path / "driver.nk"))
    nuke.GUI = False
    nuke.root()["views"].fromScript("left #ff0000\nright #00ff00")
    group = sparsemat_on(plate[0], engine)
    write = output_write(group, tmp_path / "out")
    write["file"].setValue(str(tmp_path / "out" / "out.%V.####.exr"))
    sparsemat_render.render([write], [1])
    for view in ("left", "right"):  # each view its own stream and files
        pixels, names = exr.read(str(tmp_path / "out" / f"out.{view}.0001.exr"))
        assert np.array_equal(pixels[..., names.index("A")], cli_alphas[1]), view
        stream = core.stream_id(nuke.root().name(), group.fullName(), view)
        assert sparsemat_work.tracker.last(stream, sparsemat_node.settings(group)) == 1, view
    assert not (tmp_path / "out" / "out.main.0001.exr").exists()


def test_the_command_line_driver_says_what_is_wrong_in_one_line(tmp_path, capsys):
    script = tmp_path / "shot.nk"
    script.write_text("")
    for argv, expected in (([str(tmp_path / "missing.nk"), "1-5"], "no script"),
                           ([str(script), ""], "FRAMES is empty"),
                           ([str(script), " "], "FRAMES is empty"),
                           ([str(script), "1-3x"], "malformed frame range")):
        assert sparsemat_render.main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("sparsemat: error: ") and expected in error, error
        assert len(error.strip().splitlines()) == 1, error


def test_remote_engines_get_the_pixels_inline(engine, plate, cli_alphas, tmp_path, monkeypatch):
    """A remote address sends the rendered plate's pixels in the message (read here with the numpy EXR reader)."""
    assert host.transport("ipc:///run/x.sock") == "file" and host.transport("tcp://127.0.0.1:5555") == "file"
    assert host.transport("tcp://localhost:5555") == "file" and host.transport("tcp://render07:5555") == "inline"
    monkeypatch.setattr(host, "transport", lambda address: "inline")
    sent = []
    original = EngineClient.matte

    def observed(self, stream, frame, image=None, **kwargs):
        sent.append((image is not None and image.dtype, kwargs.get("path"), kwargs.get("transport")))
        return original(self, stream, frame, image, **kwargs)

    monkeypatch.setattr(EngineClient, "matte", observed)
    source = tmp_path / "source.main.0001.exr"
    exr.write(str(source), plate[1][0], ("R", "G", "B"), half=True, compression=exr.NONE)
    settings = host.Settings(address=engine, keyframe_interval=KEYFRAMES)
    stats = host.matte(settings, "inline-test", 1, str(source), str(tmp_path / "alpha.exr"))
    assert sent == [(np.dtype(np.float16), None, "inline")]
    assert np.array_equal(exr.read(str(tmp_path / "alpha.exr"))[0][..., 0], cli_alphas[1])
    assert not source.exists() and stats["reused"] is False


def test_the_prior_input_reaches_the_engine(engine, plate, cli_alphas, tmp_path):
    """A coarse alpha on the Prior input (any resolution) is used by the engine in place of its own prior."""
    from sparsemat.engine.imageio import write_alpha

    new_session(str(tmp_path / "prior.nk"))
    coarse = np.zeros((12, 16, 1), np.float32)
    coarse[3:9, 4:12] = 1.0
    write_alpha(str(tmp_path / "prior.0001.exr"), coarse[..., 0])  # one float channel named "A"
    group = sparsemat_on(plate[0], engine)
    group.setInput(1, nuke.nodes.Read(file=str(tmp_path / "prior.####.exr"), first=1, last=1))
    sparsemat_work.matte_now(group, 1)
    made = alpha_files(group, (1,))[1]
    expected, _ = EngineClient(engine).matte("prior-check", 1, path=plate[0] % 1, colourspace="linear",
                                             prior=coarse[..., 0])
    assert np.array_equal(made, expected) and not np.array_equal(made, cli_alphas[1])


def test_the_trimap_input_and_its_dilation_reach_the_engine(engine, plate, tmp_path):
    """A trimap's alpha on the Trimap input (any resolution of the plate's aspect) bounds the band;
    its known pixels come back exact, and the node's dilation knob reaches the engine."""
    from sparsemat.engine.imageio import write_alpha

    new_session(str(tmp_path / "trimap.nk"))
    height, width = exr.read(plate[0] % 1, ("R",))[0].shape[:2]
    trimap = np.zeros((height // 2, width // 2), np.float32)
    trimap[height // 8: 3 * height // 8, width // 8: 3 * width // 8] = 0.5
    trimap[height // 5: height // 3, width // 5: width // 3] = 1.0
    write_alpha(str(tmp_path / "trimap.0001.exr"), trimap)
    group = sparsemat_on(plate[0], engine)
    group.setInput(2, nuke.nodes.Read(file=str(tmp_path / "trimap.####.exr"), first=1, last=1))
    group["trimap_dilation"].setValue(1)
    sparsemat_work.matte_now(group, 1)
    made = alpha_files(group, (1,))[1]
    expected, stats = EngineClient(engine).matte("trimap-check", 1, path=plate[0] % 1, colourspace="linear",
                                                 trimap=trimap, trimap_dilation=1)
    assert np.array_equal(made, expected)
    known = np.kron(trimap, np.ones((2, 2), np.float32))
    widened = np.lib.stride_tricks.sliding_window_view(np.pad(known == 0.5, 1), (3, 3)).any(axis=(2, 3))
    assert np.all(made[(known == 1) & ~widened] == 1) and np.all(made[(known == 0) & ~widened] == 0)
    assert stats["spatial_pixels"] == widened.sum()


def test_the_clean_plate_input_reaches_the_engine(engine, plate, cli_alphas, tmp_path):
    """A picture on the CleanPlate input (rendered as the Source is: half, raw, linear) replaces the
    network's prior, as the same file sent by the client does."""
    new_session(str(tmp_path / "clean.nk"))
    clean = tmp_path / "clean.0001.exr"
    write_rgb(clean, plate[1][2])  # another frame of the shot stands in for its clean plate
    group = sparsemat_on(plate[0], engine)
    group.setInput(3, nuke.nodes.Read(file=str(tmp_path / "clean.####.exr"), first=1, last=1))
    sparsemat_work.matte_now(group, 1)
    made = alpha_files(group, (1,))[1]
    expected, _ = EngineClient(engine).matte("clean-check", 1, path=plate[0] % 1, colourspace="linear",
                                             clean_plate_path=str(clean))
    assert np.array_equal(made, expected) and not np.array_equal(made, cli_alphas[1])
    inner = {n.name(): n for n in group.nodes()}
    assert inner["CleanPlateWrite"]["channels"].value() == "rgb" and inner["CleanPlateWrite"]["disable"].value()


def test_the_foreground_knob_puts_the_unmixed_foreground_in_rgb(engine, plate, cli_alphas, tmp_path):
    """With "foreground in rgb" on, the driver's renders carry the engine's premultiplied foreground
    in rgb and the matte in alpha: what the client gets for the same file."""
    new_session(str(tmp_path / "foreground.nk"))
    nuke.GUI = False
    group = sparsemat_on(plate[0], engine)
    group["foreground"].setValue(True)
    write = output_write(group, tmp_path / "out")
    sparsemat_render.render([write], [1])
    pixels, names = exr.read(str(tmp_path / "out" / "out.0001.exr"))
    _, stats = EngineClient(engine).matte("foreground-check", 1, path=plate[0] % 1, colourspace="linear",
                                          foreground=True)
    assert np.array_equal(pixels[..., [names.index(c) for c in "RGB"]], stats["foreground"][..., :3])
    assert np.array_equal(pixels[..., names.index("A")], cli_alphas[1])
    assert not np.array_equal(pixels[..., [names.index(c) for c in "RGB"]], plate[1][0])


def keyframed_node(plate, engine, tmp_path, keys="1,5", **knobs):
    """Read -> SparseMat with the keyframes knob set and a Read of two mattes on the Keyframes input
    (the engine's own mattes of frames 1 and 5 stand in for an artist's roto)."""
    from sparsemat.engine.imageio import write_alpha

    mattes = {}
    for key in (1, 5):
        mattes[key] = EngineClient(engine).matte(f"key-{key}", key, path=plate[0] % key, colourspace="linear",
                                                 temporal=False)[0]
        write_alpha(str(tmp_path / f"key.{key:04d}.exr"), mattes[key])
    group = sparsemat_on(plate[0], engine, keyframes=keys, **knobs)
    group.setInput(sparsemat_node.KEYFRAMES_INPUT, nuke.nodes.Read(file=str(tmp_path / "key.####.exr"), first=1,
                                                                   last=5))
    return group, mattes


@pytest.fixture()
def engine_command(monkeypatch):
    """The node runs ``sparsemat matte``: this environment's, whatever PATH says."""
    monkeypatch.setenv("SPARSEMAT_ENGINE_COMMAND", f"{sys.executable} -m sparsemat.engine.cli")


def test_the_keyframes_input_mattes_the_range_as_the_command_line_does(engine, plate, tmp_path, engine_command,
                                                                      monkeypatch):
    """Keyframes 1 and 5 on the Keyframes input: the keyframes get their mattes exactly, frames 2-4
    what ``sparsemat matte --keyframe-alpha`` makes of the same plate and mattes (in batches of two
    frames here); a render then finds every matte, and the rendered plates and keyframes are removed."""
    monkeypatch.setattr(host, "KEYFRAME_BATCH", 2)
    new_session(str(tmp_path / "keyframes.nk"))
    group, mattes = keyframed_node(plate, engine, tmp_path)
    sparsemat_work.matte_frame_range(group)
    wait_for(group)
    assert not nuke.messages, nuke.messages
    result = run_cli("matte", plate[0], tmp_path / "cli" / "a.%04d.exr", "--engine", engine, "--input-colorspace",
                     "linear", "--quiet", *(f"--keyframe-alpha={key}={tmp_path / f'key.{key:04d}.exr'}" for key in mattes))
    assert result.returncode == 0, result.stderr
    made = alpha_files(group, FRAMES)
    for number in FRAMES:
        expected = exr.read(str(tmp_path / "cli" / f"a.{number:04d}.exr"), ("A",))[0][..., 0]
        assert np.array_equal(made[number], expected), f"frame {number}"
    assert all(np.array_equal(made[key], matte) for key, matte in mattes.items())
    assert not np.array_equal(made[3], mattes[1]) and not np.array_equal(made[3], mattes[5])
    assert group["status"].value().startswith("frame 5: from keyframes")
    folder = Path(host.session_folder("nuke", core.SCRATCH_ENVIRONMENT))
    assert not [p.name for p in folder.rglob("*") if p.name.startswith(("source.", "keyframes."))]

    # Frames between the keyframes rendered alone (render.py) give the same mattes.
    for path in folder.rglob("alpha.*"):
        path.unlink()
    nuke.GUI = False
    write = output_write(group, tmp_path / "out")
    sparsemat_render.render([write], [3, 4])
    for number in (3, 4):
        pixels, names = exr.read(str(tmp_path / "out" / f"out.{number:04d}.exr"))
        assert np.array_equal(pixels[..., names.index("A")], made[number]), f"frame {number}"


@pytest.mark.parametrize("change, message", [
    ({"keys": "1,9"}, "keyframe 9 is outside the input's frames 1-5"),
    ({"keys": "1-"}, "malformed frame range '1-'"),
    ({"foreground": True}, "'foreground in rgb' is not available with keyframes"),
    ({"unplug": True}, "nothing is connected to the Keyframes input"),
    ({"trimap": True}, "the Trimap input cannot be combined with keyframes"),
])
def test_keyframes_the_node_cannot_use_are_one_clear_error(engine, plate, tmp_path, engine_command, change, message):
    new_session(str(tmp_path / "bad-keyframes.nk"))
    group, _ = keyframed_node(plate, engine, tmp_path, keys=change.get("keys", "1,5"),
                              foreground=change.get("foreground", False))
    if change.get("unplug"):
        group.setInput(sparsemat_node.KEYFRAMES_INPUT, None)
    if change.get("trimap"):
        group.setInput(2, nuke.nodes.Read(file=str(tmp_path / "key.####.exr"), first=1, last=5))
    nuke.GUI = False
    with pytest.raises(RuntimeError, match=re.escape(message)):
        sparsemat_work.matte_from_keyframes_now(group, [3])
    assert message in group["status"].value()
    assert not os.listdir(core.node_folder(nuke.root().name(), group.fullName())), "nothing was rendered or matted"


def test_matting_from_keyframes_reports_each_frame_that_was_not_written(engine, plate, tmp_path, engine_command):
    """host.matte_from_keyframes on files: a plate that cannot be read fails its frame alone, with the
    command's reason; a command that cannot start says its own one-line error."""
    from sparsemat.engine.imageio import write_alpha

    for number, frame in zip(FRAMES, plate[1]):
        write_rgb(tmp_path / f"p.{number:04d}.exr", frame)
    (tmp_path / "p.0003.exr").write_bytes(b"not an exr")
    keys = {key: str(tmp_path / f"key.{key:04d}.exr") for key in (1, 5)}
    for key, path in keys.items():
        write_alpha(path, np.full(plate[1][0].shape[:2], 0.5, np.float32))
    settings = host.Settings(address=engine)
    seen = []
    failed = host.matte_from_keyframes(settings, str(tmp_path / "p.####.exr"), keys, str(tmp_path / "a.####.exr"),
                                       list(FRAMES), on_frame=lambda done, total, text: seen.append((done, total)))
    assert list(failed) == [3] and "p.0003.exr" in failed[3], failed
    assert [(tmp_path / f"a.{n:04d}.exr").exists() for n in FRAMES] == [True, True, False, True, True]
    assert seen == [(n, 5) for n in FRAMES]
    with pytest.raises(host.MatteError) as stopped:
        host.matte_from_keyframes(settings, str(tmp_path / "missing.####.exr"), keys, str(tmp_path / "b.####.exr"),
                                  [2])
    message = str(stopped.value)  # the command's own words, without its "sparsemat: error: "
    assert message.startswith("keyframe 1 is outside the plate's frames: ") and "missing.0001.exr" in message
    with pytest.raises(host.MatteError, match="^cancelled$"):  # asked after the first frame's line
        host.matte_from_keyframes(settings, str(tmp_path / "p.####.exr"), keys, str(tmp_path / "c.####.exr"),
                                  [2, 4], cancelled=lambda: True)
    assert (tmp_path / "c.0002.exr").exists() and not (tmp_path / "c.0004.exr").exists()


# ---- errors --------------------------------------------------------------------------------------------------

def test_engine_errors_become_node_errors(engine, plate, tmp_path):
    new_session(str(tmp_path / "nan.nk"))
    bad = plate[1][0].copy()
    bad[10, 20] = np.nan
    write_rgb(tmp_path / "nan.0001.exr", bad)
    group = sparsemat_on(str(tmp_path / "nan.%04d.exr"), engine, first=1, last=2)
    write_rgb(tmp_path / "nan.0002.exr", plate[1][1])
    write = output_write(group, tmp_path / "out")

    # A render stops on the frame with the engine's message, and the node errors on that frame only,
    # through the Assert's expression (an integer knob set with setExpression).
    nuke.GUI = False
    with pytest.raises(RuntimeError, match=r"NaN.*\[bad_pixels\]"):
        sparsemat_render.render([write], [1])
    nuke.GUI = True
    assert group.node("EngineError")["expression"].toScript() == "{!(frame==1)}"
    status = group["status"].value()
    assert status.startswith("error: SparseMat1, frame 1: SparseMat engine: ") and "NaN" in status, status
    nuke.frame(1)
    assert group.hasError()
    nuke.frame(2)
    assert not group.hasError()
    with pytest.raises(RuntimeError, match="NaN"):
        group._render(1, "main")  # what Nuke shows on the node: the Assert's message

    # The button shows the same message in a dialog.
    nuke.frame(1)
    sparsemat_work.matte_this_frame(group)
    wait_for(group)
    assert len(nuke.messages) == 1 and "NaN" in nuke.messages[0] and "[bad_pixels]" in nuke.messages[0]

    # Saved with the script, the error does not follow it into another session (a farm task, say).
    sparsemat_node._failed.clear()
    sparsemat_node.sync(group)
    assert group.node("EngineError")["expression"].toScript() == "{1}" and not group.hasError()


def test_an_unreachable_engine_is_a_node_error(tmp_path):
    new_session(str(tmp_path / "down.nk"))
    write_rgb(tmp_path / "p.0001.exr", np.full((8, 8, 3), 0.5, np.float32))
    group = sparsemat_on(str(tmp_path / "p.%04d.exr"), f"ipc://{tmp_path}/nobody.sock", first=1, last=1, timeout=0.2)
    nuke.frame(1)
    started = time.monotonic()
    assert sparsemat_work.matte_this_frame(group) is not None
    assert sparsemat_work.matte_this_frame(group) is None  # a second press while the first is working
    assert nuke.messages == ["SparseMat1 is already matting; wait for it, or cancel it in the progress window"]
    wait_for(group, timeout=30)
    assert time.monotonic() - started < scaled(20)  # 3 tries of 0.2 s of silence, not the default 10 s each
    assert len(nuke.messages) == 2 and "not answering at ipc://" in nuke.messages[1]
    assert "sparsemat engine start" in group["status"].value()
    assert group.hasError()
    assert not list(Path(host.session_folder("nuke", core.SCRATCH_ENVIRONMENT)).rglob("source.*")), "the rendered plate is removed"


def test_an_unreachable_engine_leaves_no_rendered_inputs(tmp_path):
    source, prior = tmp_path / "source.main.0001.exr", tmp_path / "prior.main.0001.exr"
    for path in (source, prior):
        exr.write(str(path), np.zeros((4, 4), np.float32))
    settings = host.Settings(address=f"ipc://{tmp_path}/nobody.sock", timeout=0.1)
    with pytest.raises(Exception, match="no SparseMat engine at .*nobody.sock: its socket file"):
        host.matte(settings, "down", 1, str(source), str(tmp_path / "alpha.exr"), str(prior))
    assert not source.exists() and not prior.exists()


def test_settings_errors_are_reported_without_calling_the_engine(tmp_path):
    new_session(str(tmp_path / "layer.nk"))
    group = sparsemat_on(str(tmp_path / "p.%04d.exr"), "ipc:///nowhere", output="new layer", layer="9lives")
    assert sparsemat_work.matte_this_frame(group) is None
    assert "layer name '9lives'" in nuke.messages[0] and group["status"].value().startswith("error: ")


def test_a_malformed_frame_range_is_reported_but_fails_no_frame(tmp_path):
    new_session(str(tmp_path / "range.nk"))
    write_rgb(tmp_path / "p.0001.exr", np.full((8, 8, 3), 0.5, np.float32))
    group = sparsemat_on(str(tmp_path / "p.%04d.exr"), "ipc:///nowhere", first=1, last=1, frames="1-3x")
    nuke.frame(1)
    assert sparsemat_work.matte_frame_range(group) is None
    assert nuke.messages == ["SparseMat1: malformed frame range '1-3x': expected forms like '1001-1100', '5', "
                             "'1-10x2' or '1,3,5-7'"]
    assert group["status"].value() == f"error: {nuke.messages[0]}"
    assert group.node("EngineError")["expression"].toScript() == "{1}" and not group.hasError()


# ---- no torch in Nuke ---------------------------------------------------------------------------------------

def test_the_node_never_imports_torch(tmp_path):
    """Start-up, the menu, a node, its settings and a (failing) matte: torch and the engine stay out."""
    code = f"""
import sys
sys.path[:0] = [{str(STANDIN)!r}]
import nuke
nuke.standin_startup({str(INTEGRATION)!r})
nuke.menu("Nodes").findItem("SparseMat/SparseMat").invoke()
group = nuke.allNodes("Group")[-1]
group["address"].setValue("ipc://{tmp_path}/none.sock")
group["timeout"].setValue(0.1)
import sparsemat_nuke.node as n
from sparsemat.plugin import host
values, files = n.sync(group)
try:
    host.matte(values, "s", 1, "{tmp_path}/missing.exr", "{tmp_path}/alpha.exr")
except Exception as exc:
    print("error:", host.describe(exc, values.address))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "OpenImageIO", "PyOpenColorIO")
                or m.startswith("sparsemat.engine"))
print("client" if "sparsemat.plugin.client" in sys.modules else "no client", loaded)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SPARSEMAT_NUKE_TEMP": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "not answering" in result.stdout and result.stdout.strip().endswith("client []"), result.stdout


# ---- plain-Python pieces -------------------------------------------------------------------------------------

def test_frame_ranges_pre_roll_and_assert_expressions():
    assert host.parse_frames("", 3, 6) == [3, 4, 5, 6]
    assert host.parse_frames("1-10x3, 12", 0, 0) == [1, 4, 7, 10, 12]
    with pytest.raises(host.MatteError):
        host.parse_frames("5-1", 0, 0)
    keyed = host.Settings(address="ipc://x", keyframe_interval=10)
    assert host.with_preroll([23, 24], keyed, None, 1) == [20, 21, 22, 23, 24]
    assert host.with_preroll([23], keyed, 22, 1) == [23]  # the stream continues
    assert host.with_preroll([3], keyed, None, 1) == [1, 2, 3]  # no further back than the input
    assert host.with_preroll([23], host.Settings(address="ipc://x"), None, 1) == [23]
    assert core.assert_expression(set()) == "1"
    assert core.assert_expression({3, 5, 6, 7}) == "!(frame==3||(frame>=5&&frame<=7))"
    assert [nuke._evaluate(core.assert_expression({3, 5, 6, 7}), f) for f in range(2, 9)] == \
        [True, False, True, False, False, False, True]
    assert core.frame_path("/a/b.%V.####.exr", 7, "left") == "/a/b.left.0007.exr"
    assert core.frame_path("/a/b.%04d.exr", 12) == "/a/b.0012.exr"
    assert core.output_channel("new layer", "matte") == "matte.alpha"
    assert core.stream_id("/s.nk", "SparseMat1", "main").endswith("|/s.nk|SparseMat1|main")


def test_the_status_line_names_the_engines_mode():
    stats = {"seconds": 0.5, "active_fraction": 0.25, "engine": "cpu, SparseMat (x.pth)"}
    assert host.status_line(3, {**stats, "mode": "full", "reused": True}) == \
        "frame 3: 0.50 s, active 25.0% (temporal), engine cpu, SparseMat (x.pth)"
    assert "(full)" in host.status_line(3, {**stats, "mode": "full", "reused": False})
    # cascade and rescale refine without the previous frame, whatever "reused" says; guided says so
    for mode in ("cascade", "rescale", "guided"):
        assert f"({mode})" in host.status_line(3, {**stats, "mode": mode, "reused": True}), mode


@pytest.mark.parametrize("compression", ["none", "zips", "zip", "piz"])
def test_the_exr_reader_reads_what_openimageio_writes(tmp_path, compression):
    import OpenImageIO as oiio

    rng = np.random.default_rng(1)
    pixels = (rng.random((20, 30, 3)) * 4).astype(np.float16).astype(np.float32)
    spec = oiio.ImageSpec(30, 20, 3, oiio.HALF)
    spec.attribute("compression", compression)
    spec.x, spec.y = 2, -1  # a data window off the display window, as Nuke writes for a moved bbox
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, 30, 20
    out = oiio.ImageOutput.create(str(tmp_path / "f.exr"))
    assert out.open(str(tmp_path / "f.exr"), spec) and out.write_image(pixels)
    out.close()
    got, names = exr.read(str(tmp_path / "f.exr"), ("R", "G", "B"))
    expected = np.zeros_like(pixels)
    expected[0:19, 2:30] = pixels[1:20, 0:28]
    assert names == ["R", "G", "B"] and np.array_equal(got, expected)
    assert got.dtype == np.float16  # half channels stay half (the remote path sends them so)


@pytest.mark.parametrize("half", [False, True])
def test_openimageio_reads_the_alpha_the_node_writes(tmp_path, half):
    import OpenImageIO as oiio

    alpha = np.random.default_rng(2).random((33, 17)).astype(np.float32)
    exr.write(str(tmp_path / "a.exr"), alpha, half=half)
    image = oiio.ImageInput.open(str(tmp_path / "a.exr"))
    spec, read = image.spec(), image.read_image(0, 0, 0, 1, oiio.FLOAT)
    image.close()
    expected = alpha.astype(np.float16).astype(np.float32) if half else alpha
    assert list(spec.channelnames) == ["A"] and spec.get_string_attribute("compression") == "zip"
    assert np.array_equal(read[..., 0], expected)
