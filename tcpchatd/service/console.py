"""The daemon's stderr: every line written whole, by every thread, through one lock.

The banner, warnings, tracebacks and (with `log_target = stderr`) the traffic log all
go to stderr from different threads. Each call here is one write(2) under one lock, so
a line never lands inside another one or inside a traceback.

Imports nothing of the package (one OS concern per module).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

_lock = threading.Lock()


def write(text: str, stream: TextIO | None = None) -> None:
    """Write `text` (one line, or a block such as a traceback) as one piece, newline-ended.

    OSError (stderr closed or full) is left to the caller.
    """
    data = (text if text.endswith("\n") else text + "\n").encode("utf-8", "backslashreplace")
    with _lock:
        if stream is not None:  # a stream a test handed in
            stream.write(data.decode("utf-8"))
            stream.flush()
            return
        sys.stderr.flush()  # anything Python buffered goes first
        view = memoryview(data)
        while view:
            view = view[os.write(2, view):]


def say(text: str) -> None:
    """A line for the operator; a closed stderr is no reason to fail."""
    try:
        write(text)
    except OSError:
        pass
