"""What the host installers share: the engine client and its dependencies for a host's own Python,
and the record of what an install created. Standard library only.

A host's Python (Nuke's, Blender's) is not this interpreter, so its packages are fetched by this
interpreter's pip for the host's version: ``pip install --target SITE --python-version X.Y
--only-binary=:all:`` (wheels only, for this platform), and ``sparsemat.plugin`` is copied beside
them as a namespace package (no ``sparsemat/__init__.py``).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "plugin"
RECORD = "install-record.json"
DEPENDENCIES = ("pyzmq>=25", "msgpack>=1.0", "numpy>=1.24")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


class InstallError(RuntimeError):
    pass


def read_record(target: Path) -> dict:
    """What an earlier run recorded in ``target`` ({} when it was not made by an installer)."""
    try:
        return json.loads((target / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def write_record(target: Path, record: dict) -> None:
    (target / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def install_client(site: Path, version: str, deps: bool, say=print) -> None:
    """``sparsemat.plugin`` into ``site``, and with ``deps`` pyzmq, msgpack and numpy for Python ``version``."""
    site.mkdir(parents=True, exist_ok=True)
    client = site / "sparsemat" / "plugin"
    shutil.rmtree(client, ignore_errors=True)
    shutil.copytree(CLIENT, client, ignore=IGNORED)
    if not deps:
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade",
               "--target", str(site), "--python-version", version, "--only-binary=:all:", *DEPENDENCIES]
    say(f"installing {', '.join(DEPENDENCIES)} for Python {version}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"pip failed for Python {version}:\n{result.stderr.strip() or result.stdout}")
