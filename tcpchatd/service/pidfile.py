"""The pid file of `tcpchatd --daemon`: refuse a live one, replace a stale one."""

from __future__ import annotations

import os

from ..store.files import write_atomic
from .errors import StartupError


def check(path: str) -> None:
    """StartupError when the pid file names a live process."""
    try:
        with open(path) as fh:
            pid = int(fh.read().strip() or 0)
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        return  # unreadable or garbage: treat as stale, write() replaces it
    if pid <= 0 or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, owned by someone else
    raise StartupError(f"pid file {path} names a running process ({pid}); is tcpchatd "
                       "already running?")


def write(path: str) -> None:
    """Write this process's pid atomically (store/files.py: a temporary file of an
    unpredictable name, never written through a planted link)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomic(path, f"{os.getpid()}\n".encode(), 0o644, fsync=False)


def remove(path: str) -> None:
    """Remove the pid file if it still names this process."""
    try:
        with open(path) as fh:
            if int(fh.read().strip() or 0) != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass
