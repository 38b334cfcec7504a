"""Where a user's engine lives on this machine: its runtime folder and default address.

The folder holds the engine's socket, lock and log files, so nobody else may be able to
write there: it is created mode 0700, and an existing one is refused unless this user owns
it and no one else has any access (another local user could otherwise create it first, in
the shared temporary folder, and swap the socket). Plain Python, for hosts on any platform:
on Windows, where ZeroMQ has no ipc transport, the default address is a loopback tcp port
chosen from the user's name, and the folder's permissions are the system's (its ACLs).
"""
from __future__ import annotations

import getpass
import hashlib
import os
import stat
import sys
import tempfile

WINDOWS = sys.platform.startswith("win")
TCP_BASE_PORT = 47200  # Windows' default address: this plus a number of the user's name
TCP_PORTS = 700


class RuntimeFolderError(RuntimeError):
    """A runtime folder that is not safe to use; the message says how to fix it."""


def private_folder(folder: str, windows: bool = WINDOWS) -> str:
    """``folder``, created mode 0700 if absent; RuntimeFolderError unless it is a real folder
    (not a link) of this user's that no one else can open (on Windows: any folder)."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeFolderError(f"cannot create the engine's runtime folder {folder}: {exc.strerror or exc}") from exc
    if windows:
        return folder
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RuntimeFolderError(f"the engine's runtime folder {folder} is not a folder (a link or a file): "
                                 f"remove it, and the engine makes its own")
    if info.st_uid != os.getuid():
        raise RuntimeFolderError(f"the engine's runtime folder {folder} belongs to uid {info.st_uid}, not to you "
                                 f"(uid {os.getuid()}): another user could replace the engine's socket; remove it "
                                 f"(as its owner or root), or set XDG_RUNTIME_DIR to a folder of your own")
    if info.st_mode & 0o077:
        raise RuntimeFolderError(f"the engine's runtime folder {folder} is mode {stat.S_IMODE(info.st_mode):04o}: "
                                 f"others could replace the engine's socket; run chmod 700 {folder}")
    return folder


def runtime_folder(windows: bool = WINDOWS) -> str:
    """``$XDG_RUNTIME_DIR/sparsemat`` (when that folder exists), else ``sparsemat-USER`` in the
    temporary folder (USER: the uid, or the user name on Windows), checked by ``private_folder``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return private_folder(os.path.join(base, "sparsemat"), windows)
    owner = getpass.getuser() if windows else str(os.getuid())
    return private_folder(os.path.join(tempfile.gettempdir(), f"sparsemat-{owner}"), windows)


def default_address(windows: bool = WINDOWS) -> str:
    """The ipc socket in the runtime folder; on Windows, a loopback tcp port of the user's own."""
    if windows:
        number = int(hashlib.sha1(getpass.getuser().encode()).hexdigest(), 16) % TCP_PORTS
        return f"tcp://127.0.0.1:{TCP_BASE_PORT + number}"
    return f"ipc://{os.path.join(runtime_folder(windows), 'engine.sock')}"
