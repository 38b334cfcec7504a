#!/usr/bin/env python3
"""Install (or remove) the SparseMat node for Nuke. Standard library only.

    python3 install/install_nuke.py [--nuke-path ~/.nuke] [--python-version 3.11 ...] [--no-deps]
    python3 install/install_nuke.py --uninstall [--nuke-path ~/.nuke]

What it does, in the Nuke folder (``~/.nuke``, or a NUKE_PATH folder given with ``--nuke-path``):

- copies ``host_integrations/nuke/`` to ``<folder>/sparsemat-nuke/`` (init.py, menu.py, sparsemat_nuke/);
- for each ``--python-version`` (Nuke's Python: Nuke 14 is 3.9, Nuke 15 is 3.10, Nuke 16 is 3.11;
  default: this interpreter's), installs the engine client's dependencies (pyzmq, msgpack, numpy)
  with ``pip install --target <folder>/sparsemat-nuke/lib/pythonX.Y/site-packages --python-version X.Y
  --only-binary=:all:`` and copies the ``sparsemat.plugin`` package there (``--no-deps`` skips pip);
- adds a block between marker comments to ``<folder>/init.py`` (created if missing) that puts
  ``sparsemat-nuke`` on Nuke's plug-in path; Nuke then runs its init.py in every mode and its
  menu.py in the GUI.

Running it again refreshes the files and leaves exactly one block. ``--uninstall`` removes the block
(and init.py, or the folder itself, when the installer created them) and ``sparsemat-nuke/``;
a record of what was created is kept in ``sparsemat-nuke/install-record.json``. A first install
that fails (pip, say) removes what it made; a failed re-install leaves the folder for a retry
or ``--uninstall``.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from client_packages import IGNORED, REPO, InstallError, install_client, read_record, write_record

SOURCE = REPO / "host_integrations" / "nuke"
FOLDER = "sparsemat-nuke"
BEGIN = "# >>> SparseMat for Nuke (install/install_nuke.py; remove with --uninstall) >>>"
END = "# <<< SparseMat for Nuke <<<"


def block(plugin_folder: Path) -> str:
    return (f"{BEGIN}\nimport nuke\nnuke.pluginAddPath({str(plugin_folder)!r})\n{END}\n")


def _block_pattern() -> re.Pattern:
    return re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)


def install(nuke_path: Path, python_versions: list[str], deps: bool, say=print) -> Path:
    target = nuke_path / FOLDER
    record = read_record(target)
    if target.exists() and not record:
        raise InstallError(f"{target} exists but was not made by this installer; move it away first")
    fresh = not record
    if fresh:
        record = {"nuke_path_created": not nuke_path.exists(), "init_created": False, "newline_added": False,
                  "python_versions": []}
    nuke_path.mkdir(parents=True, exist_ok=True)
    target.mkdir(exist_ok=True)
    # Recorded first: a run killed halfway still leaves a folder that a retry or --uninstall accepts.
    write_record(target, record)
    try:
        _copy_files(target, python_versions, deps, record, say)
    except BaseException:
        if fresh:  # none of it was there before: a failed install leaves nothing behind
            _remove_folder(nuke_path, target, record)
        raise

    init = nuke_path / "init.py"
    text = init.read_text() if init.exists() else None
    if text is None:
        record["init_created"] = True
        text = ""
    if _block_pattern().search(text):
        text = _block_pattern().sub(lambda _: block(target), text, count=1)
    else:
        if text and not text.endswith("\n"):
            text += "\n"
            record["newline_added"] = True
        text += block(target)
    init.write_text(text)
    write_record(target, record)
    say(f"installed SparseMat for Nuke in {target} (plug-in path added to {init})")
    return target


def _copy_files(target: Path, python_versions: list[str], deps: bool, record: dict, say) -> None:
    """The integration, and per Python version the client and (with ``deps``) its dependencies."""
    # The integration: replaced wholesale, so files removed upstream do not linger.
    for name in ("init.py", "menu.py"):
        shutil.copy2(SOURCE / name, target / name)
    shutil.rmtree(target / "sparsemat_nuke", ignore_errors=True)
    shutil.copytree(SOURCE / "sparsemat_nuke", target / "sparsemat_nuke", ignore=IGNORED)

    for version in python_versions:
        install_client(target / "lib" / f"python{version}" / "site-packages", version, deps, say)
        if version not in record["python_versions"]:
            record["python_versions"].append(version)


def _remove_folder(nuke_path: Path, target: Path, record: dict) -> None:
    """``sparsemat-nuke/``, and the Nuke folder too when the installer created it and it is now empty."""
    if target.exists():
        shutil.rmtree(target)
    if record.get("nuke_path_created") and nuke_path.exists() and not any(nuke_path.iterdir()):
        nuke_path.rmdir()


def uninstall(nuke_path: Path, say=print) -> None:
    target = nuke_path / FOLDER
    record = read_record(target)
    if target.exists() and not record:
        raise InstallError(f"{target} was not made by this installer; not removing it")
    init = nuke_path / "init.py"
    if init.exists():
        text = init.read_text()
        stripped = _block_pattern().sub("", text)
        if stripped != text:
            if record.get("newline_added") and stripped.endswith("\n"):
                stripped = stripped[:-1]
            if record.get("init_created") and not stripped.strip():
                init.unlink()
            else:
                init.write_text(stripped)
    _remove_folder(nuke_path, target, record)
    say(f"removed SparseMat for Nuke from {nuke_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nuke-path", type=Path, default=Path.home() / ".nuke",
                        help="Nuke folder to install into (default: ~/.nuke; or a folder on NUKE_PATH)")
    parser.add_argument("--python-version", action="append", dest="python_versions", metavar="X.Y",
                        help="Nuke's Python version; repeat for several Nuke versions "
                             f"(default: {sys.version_info[0]}.{sys.version_info[1]}, this interpreter's)")
    parser.add_argument("--no-deps", action="store_true",
                        help="do not pip-install pyzmq, msgpack and numpy (they must be importable in Nuke)")
    parser.add_argument("--uninstall", action="store_true", help="remove what an earlier run added")
    args = parser.parse_args(argv)
    nuke_path = args.nuke_path.expanduser().absolute()
    versions = args.python_versions or [f"{sys.version_info[0]}.{sys.version_info[1]}"]
    for version in versions:
        if not re.fullmatch(r"3\.\d+", version):
            parser.error(f"--python-version must look like 3.11, got {version!r}")
    try:
        if args.uninstall:
            uninstall(nuke_path)
        else:
            install(nuke_path, versions, deps=not args.no_deps)
    except (InstallError, OSError) as exc:
        print(f"install_nuke: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
