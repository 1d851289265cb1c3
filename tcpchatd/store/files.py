"""Files replaced atomically: a fresh temporary file beside the target, fsync, rename over
the target, fsync of the folder; a crash or a power cut leaves the old file or the new
one, never a torn one.

The temporary file has an unpredictable name and is created with O_EXCL and O_NOFOLLOW
(tempfile.mkstemp), so a name planted in the folder (a symbolic link to a file elsewhere,
say) is never written through; whatever fails (a full disk), it is removed.
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes, mode: int = 0o640, fsync: bool = True) -> None:
    """Replace `path` with `data` (created with `mode`); OSError when it cannot be done,
    the old file then left as it was and no temporary file behind."""
    folder = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                dir=folder)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    if fsync:
        sync_folder(folder)


def sync_folder(folder: str) -> None:
    """fsync a folder, so that a rename in it lasts."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
