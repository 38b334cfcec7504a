"""The Blender add-on in real Blender (Debian's 3.4 here): installed by install/install_blender.py,
run headless as a farm runs it and in Blender's GUI under Xvfb, against a real engine.

Each test builds a compositor shot on the sample clip (tests/blender_scripts/build_shot.py), has
the add-on matte it, and compares what Blender composites with ``sparsemat matte`` on the same
plate pixels through the same engine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli

INSTALLER = REPO / "install" / "install_blender.py"
SCRIPTS = REPO / "tests" / "blender_scripts"
FRAMES, WIDTH, HEIGHT, KEYFRAMES = 4, 320, 180, 2


@pytest.fixture(scope="module")
def blender() -> str:
    path = shutil.which("blender")
    if path is None:
        if os.environ.get("SPARSEMAT_TESTS_WITHOUT_BLENDER"):
            pytest.skip("Blender is not installed and SPARSEMAT_TESTS_WITHOUT_BLENDER is set")
        pytest.fail("Blender is not installed: apt-get install -y blender xvfb xauth "
                    "(or set SPARSEMAT_TESTS_WITHOUT_BLENDER=1 to skip the Blender tests)")
    return path


@pytest.fixture(scope="module")
def blender_env(tmp_path_factory) -> dict:
    """Blender's user folders (add-ons, preferences) and temporary folders inside the test's."""
    home = tmp_path_factory.mktemp("blender-home")
    (home / "tmp").mkdir()
    return {**outside_the_virtualenv(), "BLENDER_USER_SCRIPTS": str(home / "scripts"),
            "BLENDER_USER_CONFIG": str(home / "config"), "SPARSEMAT_BLENDER_TEMP": str(home / "scratch"),
            "TMPDIR": str(home / "tmp")}


def outside_the_virtualenv() -> dict:
    """This environment without the test virtualenv on PATH: a Blender built on the system Python
    (Debian's) finds its Python by PATH and would take the virtualenv's packages as its own."""
    venv = os.path.dirname(sys.executable)
    path = os.pathsep.join(part for part in os.environ.get("PATH", "").split(os.pathsep) if part != venv)
    return {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PATH": path}


def installer(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(INSTALLER), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def installed(blender, blender_env) -> Path:
    """The add-on installed with its real dependencies, for Blender's own Python, and enabled."""
    result = installer("--blender", blender, env=blender_env)
    if result.returncode != 0 and any(word in result.stderr.lower() for word in ("connection", "network",
                                                                                  "resolve", "proxy")):
        pytest.skip(f"PyPI cannot be reached: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    return Path(blender_env["BLENDER_USER_SCRIPTS"]) / "addons" / "sparsemat_blender"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    subprocess.run([sys.executable, str(REPO / "examples" / "make_sample_clip.py"), str(folder), "--frames",
                    str(FRAMES), "--size", f"{WIDTH}x{HEIGHT}"], check=True, capture_output=True)
    return folder


def run_blender(blender: str, *args, env: dict, gui: bool = False) -> subprocess.CompletedProcess:
    """Blender headless (or its GUI on a virtual display); a Python error in a script fails the run."""
    command = [blender, *([] if gui else ["-b"]), *map(str, args)]
    if gui:
        command = ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def shot(blender: str, clip: Path, folder: Path, env: dict) -> Path:
    """A saved shot: Plate (the clip) -> Composite, an artist's Archive File Output, plates/ rendered."""
    folder.mkdir(parents=True, exist_ok=True)
    blend = folder / "shot.blend"
    run_blender(blender, "--factory-startup", "--python-exit-code", "1", "--python", SCRIPTS / "build_shot.py",
                "--", clip / "plate.0001.png", blend, FRAMES, WIDTH, HEIGHT, env=env)
    return blend


def read(path: Path) -> np.ndarray:
    import OpenImageIO as oiio

    pixels = oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)
    assert pixels is not None and pixels.size, path
    return pixels


def cli_alphas(engine: str, folder: Path) -> dict[int, np.ndarray]:
    """``sparsemat matte`` of the shot's plates, with the add-on's options, through the same engine."""
    result = run_cli("matte", folder / "plates" / "plate.%04d.exr", folder / "cli" / "a.%04d.exr", "--engine", engine,
                     "--temporal", "--keyframe-interval", KEYFRAMES, "--input-colorspace", "linear", "--quiet")
    assert result.returncode == 0, result.stderr
    return {frame: read(folder / "cli" / f"a.{frame:04d}.exr")[..., 0] for frame in range(1, FRAMES + 1)}


def matte_expression(engine: str, **options) -> str:
    arguments = ", ".join(f"{name}={value!r}" for name, value in {"node": "Plate", **options}.items())
    return (f"import bpy; bpy.context.preferences.addons['sparsemat_blender'].preferences.address = {engine!r}; "
            f"bpy.ops.sparsemat.matte({arguments})")


# ---- the add-on -----------------------------------------------------------------------------------------

def test_the_installer_puts_the_add_on_and_its_packages_where_blender_loads_them(blender, blender_env, installed):
    code = ("import bpy, sys, sparsemat_blender, numpy, zmq, msgpack; "
            "print('LOADED', 'sparsemat_blender' in bpy.context.preferences.addons, sparsemat_blender.__file__, "
            "numpy.__file__, zmq.__file__, 'torch' in sys.modules)")
    result = run_blender(blender, "--python-exit-code", "1", "--python-expr", code, env=blender_env)
    enabled, addon, numpy_file, zmq_file, torch = next(
        line for line in result.stdout.splitlines() if line.startswith("LOADED")).split()[1:]
    assert enabled == "True" and torch == "False"
    assert addon == str(installed / "__init__.py")
    assert numpy_file.startswith(str(installed / "lib")) and zmq_file.startswith(str(installed / "lib"))


def test_the_farm_one_liner_mattes_then_renders_what_sparsemat_matte_gives(blender, blender_env, installed, engine,
                                                                            clip, tmp_path):
    """``blender -b shot.blend --python-expr "bpy.ops.sparsemat.matte(...)" -a``: the rendered frames'
    alpha is ``sparsemat matte``'s, their colour the plate times it (Set Alpha, apply mode). A second
    run of a sub-range pre-rolls from its keyframe, reuses the nodes and gives the same alphas."""
    blend = shot(blender, clip, tmp_path, blender_env)
    run_blender(blender, blend, "--python-exit-code", "1", "--python-expr",
                matte_expression(engine, keyframe_interval=KEYFRAMES), "-a", env=blender_env)
    expected = cli_alphas(engine, tmp_path)
    for frame, alpha in expected.items():
        rendered = read(tmp_path / "render" / f"frame.{frame:04d}.exr")
        plate = read(tmp_path / "plates" / f"plate.{frame:04d}.exr")
        assert np.abs(rendered[..., 3] - alpha).max() <= 1e-6, frame
        assert np.abs(rendered[..., :3] - plate * alpha[..., None]).max() <= 1e-6, frame
        assert 0 < alpha.mean() < 1, "a matte with something in it"
    first_run = {frame: read(tmp_path / "sparsemat" / "Plate" / f"alpha.{frame:04d}.exr")
                 for frame in range(1, FRAMES + 1)}

    code = (matte_expression(engine, keyframe_interval=KEYFRAMES, frames="4") + "; tree = bpy.context.scene."
            "node_tree; print('TREE', len(tree.nodes), len(tree.links), tree.nodes['SparseMat Plate matte']."
            "frame_duration)")
    result = run_blender(blender, blend, "--python-exit-code", "1", "--python-expr", code, env=blender_env)
    nodes, links, duration = next(line for line in result.stdout.splitlines() if line.startswith("TREE")).split()[1:]
    assert (nodes, links, duration) == ("5", "4", str(FRAMES))  # Plate, Composite, Archive, matte, Set Alpha
    for frame in range(1, FRAMES + 1):
        assert np.array_equal(read(tmp_path / "sparsemat" / "Plate" / f"alpha.{frame:04d}.exr"), first_run[frame])


def test_the_button_in_blenders_gui_mattes_while_blender_stays_live(blender, blender_env, installed, engine, clip,
                                                                    tmp_path):
    """Blender's GUI (on Xvfb): the operator invoked from a compositor editor runs modal; a timer of the
    test's own keeps firing while frames are matted; the artist's File Output writes nothing meanwhile;
    the mattes are wired in as an Image node and a Set Alpha node, and equal ``sparsemat matte``'s."""
    if shutil.which("xvfb-run") is None:
        pytest.fail("xvfb-run is not installed: apt-get install -y xvfb xauth")
    blend = shot(blender, clip, tmp_path, blender_env)
    run_blender(blender, blend, "--python-exit-code", "1", "--python", SCRIPTS / "gui_matte.py", "--", engine,
                tmp_path / "seen.json", env=blender_env, gui=True)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["invoke"] == ["RUNNING_MODAL"]
    assert seen["ticks_while_matting"] >= 1, "Blender's event loop ran while the frames were matted"
    assert seen["archive_during"] == [], "the artist's File Output node was muted for the plate renders"
    assert seen["frame"] == 1, "the current frame is put back"
    assert seen["links"] == ["Plate.Image -> SparseMat Plate.Image",
                             "SparseMat Plate matte.Alpha -> SparseMat Plate.Alpha",
                             "SparseMat Plate.Image -> Archive.Image",
                             "SparseMat Plate.Image -> Composite.Image"]
    for frame, alpha in cli_alphas(engine, tmp_path).items():
        assert np.abs(read(tmp_path / "sparsemat" / "Plate" / f"alpha.{frame:04d}.exr")[..., 0] - alpha).max() <= 1e-6


def test_what_is_wrong_is_one_report_line_and_the_tree_is_left_alone(blender, blender_env, installed, clip, tmp_path):
    blend = shot(blender, clip, tmp_path, blender_env)
    run_blender(blender, blend, "--python-exit-code", "1", "--python", SCRIPTS / "errors.py", "--",
                f"ipc://{tmp_path}/nobody.sock", tmp_path / "errors.json", env=blender_env)
    errors = json.loads((tmp_path / "errors.json").read_text())
    expected = {
        "no engine": "frame 1: SparseMat engine not answering at ipc://",
        "bad frames": "frame range '5-1' ends at 1, before its start 5",
        "no such node": "no node named 'Plates' in the compositor",
        "no image output": "the node 'Composite' has no image output to matte",
        "nothing selected": "select the node to matte",
        "unsaved file": "save the .blend first",
    }
    for case, text in expected.items():
        assert text in errors[case].get("error", ""), (case, errors[case])
        assert errors[case]["error"].strip().count("\n") == 0, (case, "one line")
        assert errors[case]["tree_unchanged"], case
    scratch = Path(blender_env["SPARSEMAT_BLENDER_TEMP"])
    assert not list(scratch.rglob("*.exr")), "no rendered plate is left behind"


# ---- the installer ----------------------------------------------------------------------------------------

def test_an_add_on_that_cannot_load_is_reported_and_nothing_is_left(blender, tmp_path):
    """Without its packages (--no-deps: Blender's Python has no numpy) Blender cannot enable the
    add-on: the installer says why and removes what it copied."""
    env = {**outside_the_virtualenv(), "BLENDER_USER_SCRIPTS": str(tmp_path / "scripts"),
           "BLENDER_USER_CONFIG": str(tmp_path / "c")}
    probe = run_blender(blender, "--factory-startup", "--python-expr",
                        "import importlib.util; print('NUMPY', importlib.util.find_spec('numpy') is not None)", env=env)
    if "NUMPY True" in probe.stdout:
        pytest.skip("this Blender's Python has numpy of its own")
    result = installer("--blender", blender, "--no-deps", env=env)
    assert result.returncode == 1
    assert "could not enable the add-on" in result.stderr and "numpy" in result.stderr, result.stderr
    assert not (tmp_path / "scripts" / "addons" / "sparsemat_blender").exists()


def test_uninstall_disables_the_add_on_and_removes_only_its_own_folder(blender, tmp_path):
    env = {**outside_the_virtualenv(), "BLENDER_USER_SCRIPTS": str(tmp_path / "scripts"),
           "BLENDER_USER_CONFIG": str(tmp_path / "c")}
    addons = tmp_path / "scripts" / "addons"
    assert installer("--blender", blender, "--no-deps", "--no-enable", env=env).returncode == 0
    assert list((addons / "sparsemat_blender" / "lib").glob("python3.*/site-packages/sparsemat/plugin/client.py"))
    result = installer("--blender", blender, "--uninstall", env=env)
    assert result.returncode == 0, result.stderr
    assert not (addons / "sparsemat_blender").exists()
    code = "import bpy; print('ENABLED', 'sparsemat_blender' in bpy.context.preferences.addons)"
    result = run_blender(blender, "--python-expr", code, env=env)
    assert "ENABLED False" in result.stdout

    (addons / "sparsemat_blender").mkdir(parents=True)
    (addons / "sparsemat_blender" / "mine.py").write_text("# someone else's\n")
    for args in ((), ("--uninstall",)):
        result = installer("--blender", blender, "--no-deps", *args, env=env)
        assert result.returncode == 1 and "not made by this installer" in result.stderr
    assert (addons / "sparsemat_blender" / "mine.py").exists()
