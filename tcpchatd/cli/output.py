"""What the commands print, when the reader of their output may go away (`| head -2`).

A closed pipe is not a failure of the command: whatever was asked was done. The rest of
the output goes to /dev/null (Python would otherwise fail once more while flushing at
exit) and the command exits with its own status, never with a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn


def reader_left() -> None:
    """Send what is still to be printed nowhere: the reader of stdout has gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def exit_with(main: Callable[[], int]) -> NoReturn:
    """sys.exit(main()), the last output flushed; a reader that left is no error."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        reader_left()
        status = 0
    sys.exit(status)
