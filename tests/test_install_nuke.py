"""install/install_nuke.py: into a Nuke folder, again (no duplicates), and out (the folder as it was)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

INSTALLER = REPO / "install" / "install_nuke.py"
STANDIN = REPO / "tests" / "nuke_standin"
BEGIN = "# >>> SparseMat for Nuke"


def installer(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(INSTALLER), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


# pip honours these: no index and no configuration (so no find-links), hence fast and offline
NO_INDEX = {**os.environ, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_install_reinstall_uninstall_leave_the_folder_as_it_was(tmp_path):
    nuke_path = tmp_path / ".nuke"
    nuke_path.mkdir()
    (nuke_path / "init.py").write_text("import nuke\nnuke.pluginAddPath('./gizmos')")  # no final newline
    (nuke_path / "menu.py").write_text("# the artist's own menu\n")
    before = snapshot(tmp_path)

    for _ in range(2):  # a second run refreshes the files and keeps one block
        result = installer("--nuke-path", nuke_path, "--python-version", "3.11", "--python-version", "3.10",
                           "--no-deps")
        assert result.returncode == 0, result.stderr
        init = (nuke_path / "init.py").read_text()
        assert init.startswith("import nuke\nnuke.pluginAddPath('./gizmos')\n")
        assert init.count(BEGIN) == 1 and init.count("pluginAddPath") == 2
        assert f"nuke.pluginAddPath({str(nuke_path / 'sparsemat-nuke')!r})" in init
    target = nuke_path / "sparsemat-nuke"
    for name in ("init.py", "menu.py", "sparsemat_nuke/core.py", "sparsemat_nuke/node.py",
                 "lib/python3.11/site-packages/sparsemat/plugin/client.py",
                 "lib/python3.10/site-packages/sparsemat/plugin/protocol.py",
                 "lib/python3.10/site-packages/sparsemat/plugin/exr.py"):
        assert (target / name).is_file(), name
    assert not (target / "lib/python3.11/site-packages/sparsemat/__init__.py").exists()  # a namespace package
    assert (nuke_path / "menu.py").read_text() == "# the artist's own menu\n"

    result = installer("--nuke-path", nuke_path, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path) == before


def test_a_fresh_folder_is_created_and_removed_again(tmp_path):
    nuke_path = tmp_path / "nuke-path"
    assert installer("--nuke-path", nuke_path, "--no-deps").returncode == 0
    assert (nuke_path / "init.py").read_text().startswith(BEGIN)
    assert installer("--nuke-path", nuke_path, "--uninstall").returncode == 0
    assert not nuke_path.exists()


def test_a_folder_the_installer_did_not_make_is_left_alone(tmp_path):
    (tmp_path / "sparsemat-nuke").mkdir()
    (tmp_path / "sparsemat-nuke" / "mine.txt").write_text("x")
    result = installer("--nuke-path", tmp_path, "--no-deps")
    assert result.returncode == 1 and "was not made by this installer" in result.stderr
    result = installer("--nuke-path", tmp_path, "--uninstall")
    assert result.returncode == 1 and (tmp_path / "sparsemat-nuke" / "mine.txt").exists()


def test_a_failed_install_leaves_nothing_and_a_failed_reinstall_can_be_retried_or_removed(tmp_path):
    """pip fails (no wheels for Python 3.99): a first install removes what it made, a re-install's
    folder is still the installer's, so a retry and --uninstall both work."""
    fresh = tmp_path / "fresh"
    result = installer("--nuke-path", fresh, "--python-version", "3.99", env=NO_INDEX)
    assert result.returncode == 1 and "pip failed for Python 3.99" in result.stderr
    assert not fresh.exists()

    nuke_path = tmp_path / ".nuke"
    nuke_path.mkdir()
    (nuke_path / "init.py").write_text("import nuke\n")
    before = snapshot(tmp_path)
    result = installer("--nuke-path", nuke_path, "--python-version", "3.99", env=NO_INDEX)
    assert result.returncode == 1 and snapshot(tmp_path) == before

    assert installer("--nuke-path", nuke_path, "--no-deps").returncode == 0
    result = installer("--nuke-path", nuke_path, "--python-version", "3.99", env=NO_INDEX)
    assert result.returncode == 1 and "pip failed" in result.stderr
    result = installer("--nuke-path", nuke_path, "--no-deps")
    assert result.returncode == 0, result.stderr
    assert installer("--nuke-path", nuke_path, "--python-version", "3.99", env=NO_INDEX).returncode == 1
    result = installer("--nuke-path", nuke_path, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path) == before


def test_nuke_starts_with_the_installed_integration(tmp_path):
    """Nuke's start-up (stand-in) from the installed folder: init.py, the plug-in path, menu, a node."""
    nuke_path = tmp_path / ".nuke"
    assert installer("--nuke-path", nuke_path, "--no-deps").returncode == 0
    code = f"""
import sys
sys.path.insert(0, {str(STANDIN)!r})
import nuke
nuke.standin_startup({str(nuke_path)!r})
nuke.menu("Nodes").findItem("SparseMat/SparseMat").invoke()
import sparsemat_nuke
print(sparsemat_nuke.__file__)
print(nuke.allNodes("Group")[-1].name(), len(nuke._callbacks["beforeFrameRender"]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SPARSEMAT_NUKE_TEMP": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    installed_file, node_line = result.stdout.strip().splitlines()[-2:]
    assert installed_file.startswith(str(nuke_path / "sparsemat-nuke" / "sparsemat_nuke"))
    assert node_line == "SparseMat1 1"


def test_real_dependencies_for_this_python_make_the_client_importable_on_their_own(tmp_path):
    """pip for this interpreter's version, then an interpreter without its site-packages (-S) loads the
    client from the installed folder alone, as Nuke's Python would."""
    nuke_path = tmp_path / ".nuke"
    result = installer("--nuke-path", nuke_path)
    if result.returncode != 0 and any(word in result.stderr.lower() for word in ("connection", "network",
                                                                                  "resolve", "proxy")):
        pytest.skip(f"PyPI cannot be reached: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    code = f"""
import sys
sys.path.append({str(nuke_path / 'sparsemat-nuke')!r})
import sparsemat_nuke
assert sparsemat_nuke.add_site_packages()
from sparsemat.plugin import host
client = host.import_client()
import numpy, zmq, msgpack
print(client.__file__, numpy.__file__, zmq.__file__, msgpack.__file__, "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert all(path.startswith(str(nuke_path / "sparsemat-nuke" / "lib")) for path in paths[:-1]), paths
    assert paths[-1] == "False"
    assert installer("--nuke-path", nuke_path, "--uninstall").returncode == 0 and not nuke_path.exists()
