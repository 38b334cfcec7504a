#!/usr/bin/env python3
"""Install (or remove) the SparseMat add-on for Blender's compositor. Standard library only.

    python3 install/install_blender.py [--blender /path/to/blender] [--no-deps] [--no-enable]
    python3 install/install_blender.py --uninstall [--blender /path/to/blender]

What it does:

- asks that Blender (``blender -b --factory-startup``) for its Python version and its user add-on
  folder (``~/.config/blender/X.Y/scripts/addons`` on Linux, or $BLENDER_USER_SCRIPTS/addons);
  ``--addons-folder`` and ``--python-version`` answer instead, for a Blender this machine cannot run;
- copies ``host_integrations/blender/sparsemat_blender/`` there, and into its
  ``lib/pythonX.Y/site-packages`` the ``sparsemat.plugin`` package and (unless ``--no-deps``) the
  engine client's dependencies (pyzmq, msgpack, numpy) for Blender's Python version;
- enables the add-on in Blender's preferences and saves them (unless ``--no-enable``), as
  Edit > Preferences > Add-ons would.

Running it again refreshes the files. ``--uninstall`` disables the add-on and removes its folder;
a folder this installer did not make is never touched.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from client_packages import IGNORED, REPO, InstallError, RECORD, install_client, read_record, write_record

SOURCE = REPO / "host_integrations" / "blender" / "sparsemat_blender"
ADDON = "sparsemat_blender"
MARK = "SPARSEMAT-INSTALL:"  # how Blender's answers are told apart from its own output

PROBE = f"""
import sys, bpy
print({MARK!r}, __import__("json").dumps({{"python": "%d.%d" % sys.version_info[:2],
      "addons": bpy.utils.user_resource("SCRIPTS", path="addons"), "blender": bpy.app.version_string}}))
"""
# Without --factory-startup: the user's own preferences are loaded, changed and saved.
ENABLE = f"""
import addon_utils, bpy
module = addon_utils.enable({ADDON!r}, default_set=True, handle_error=lambda exc: print({MARK!r}, "error", exc))
if module is not None:
    bpy.ops.wm.save_userpref()
    print({MARK!r}, "enabled")
"""
DISABLE = f"""
import addon_utils, bpy
addon_utils.disable({ADDON!r}, default_set=True)
bpy.ops.wm.save_userpref()
print({MARK!r}, "disabled")
"""


def run_blender(blender: str, code: str, factory: bool = False) -> list[str]:
    """Run ``code`` in Blender in the background; the lines it printed after MARK."""
    command = [blender, "-b", *(["--factory-startup"] if factory else []), "--python-exit-code", "1",
               "--python-expr", code]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise InstallError(f"Blender not found at {blender!r}: pass --blender /path/to/blender") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{blender} did not finish in 300 s") from None
    answers = [line.split(MARK, 1)[1].strip() for line in result.stdout.splitlines() if MARK in line]
    if result.returncode != 0 or not answers:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise InstallError(f"{blender} failed (exit {result.returncode}): {' / '.join(detail)}")
    return answers


def probe(blender: str) -> dict:
    return json.loads(run_blender(blender, PROBE, factory=True)[-1])


def install(addons: Path, version: str, deps: bool, blender: str | None, say=print) -> Path:
    target = addons / ADDON
    record = read_record(target)
    if target.exists() and not record:
        raise InstallError(f"{target} exists but was not made by this installer; move it away first")
    fresh = not record
    target.mkdir(parents=True, exist_ok=True)
    record = {**record, "python_version": version}
    write_record(target, record)  # first: a run killed halfway leaves a folder a retry accepts
    try:
        for entry in target.iterdir():  # the add-on's files are replaced wholesale; lib/ is refreshed
            if entry.name not in ("lib", RECORD):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        for entry in SOURCE.iterdir():
            if entry.is_dir():
                if entry.name != "__pycache__":
                    shutil.copytree(entry, target / entry.name, ignore=IGNORED)
            else:
                shutil.copy2(entry, target / entry.name)
        install_client(target / "lib" / f"python{version}" / "site-packages", version, deps, say)
        if blender is not None:
            answer = run_blender(blender, ENABLE)[-1]
            if answer != "enabled":
                raise InstallError(f"Blender could not enable the add-on: {answer.removeprefix('error ')}")
            say("enabled the add-on in Blender's preferences")
    except BaseException:
        if fresh:  # none of it was there before: a failed install leaves nothing behind
            shutil.rmtree(target, ignore_errors=True)
        raise
    say(f"installed SparseMat for Blender in {target}")
    return target


def uninstall(addons: Path, blender: str | None, say=print) -> None:
    target = addons / ADDON
    if not target.exists():
        say(f"SparseMat for Blender is not installed in {addons}")
        return
    if not read_record(target):
        raise InstallError(f"{target} was not made by this installer; not removing it")
    if blender is not None:
        run_blender(blender, DISABLE)
    shutil.rmtree(target)
    say(f"removed SparseMat for Blender from {addons}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blender", default=os.environ.get("BLENDER", "blender"),
                        help="the Blender to install for (default: $BLENDER, else blender on PATH)")
    parser.add_argument("--addons-folder", type=Path, help="install here instead of asking Blender")
    parser.add_argument("--python-version", metavar="X.Y", help="Blender's Python version, instead of asking it")
    parser.add_argument("--no-deps", action="store_true",
                        help="do not pip-install pyzmq, msgpack and numpy (they must be importable in Blender)")
    parser.add_argument("--no-enable", action="store_true", help="copy the files only; enable it in Preferences")
    parser.add_argument("--uninstall", action="store_true", help="disable the add-on and remove its folder")
    args = parser.parse_args(argv)
    if args.python_version and not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version must look like 3.11, got {args.python_version!r}")
    runs_blender = not (args.no_enable and args.addons_folder and (args.python_version or args.uninstall))
    try:
        facts = probe(args.blender) if runs_blender else {}
        addons = (args.addons_folder or Path(facts["addons"])).expanduser().absolute()
        blender = None if args.no_enable else args.blender
        if args.uninstall:
            uninstall(addons, blender)
        else:
            install(addons, args.python_version or facts["python"], deps=not args.no_deps, blender=blender)
    except (InstallError, OSError) as exc:
        print(f"install_blender: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
