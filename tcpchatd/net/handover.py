"""The hand-over of a hitless upgrade: the whole state in a memfd, and the fds to keep.

The old image writes one JSON document (bytes as base64) with a format version to an
anonymous memory file, clears close-on-exec on exactly the fds the new image adopts
(listeners, client sockets, the admin socket and the waiting admin connection, the
memfd itself) and execs. The new image finds the memfd's number in the environment,
reads the state, and closes it. No socket is shut down on the way: the kernel keeps
every connection open across exec.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, MutableMapping
from typing import Any

ENV = "TCPCHATD_HANDOVER_FD"
STATE_FORMAT = 1
ACCEPTED_FORMATS = frozenset({1})  # what this code can read (the pre-flight asks)


class HandoverError(Exception):
    """The state cannot be read (one line)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def write(state: dict[str, Any]) -> int:
    """The state in a memfd, rewound; its fd (inheritable)."""
    fd = os.memfd_create("tcpchatd-handover", 0)  # no MFD_CLOEXEC: the new image reads it
    data = json.dumps({"format": STATE_FORMAT, **state}, separators=(",", ":")).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def keep_across_exec(fds: Iterable[int]) -> None:
    for fd in fds:
        os.set_inheritable(fd, True)


def take(environ: MutableMapping[str, str] | None = None) -> dict[str, Any] | None:
    """The state handed over to this process, or None for a normal start."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    text = env.pop(ENV, None)
    if text is None:
        return None
    try:
        fd = int(text)
        with os.fdopen(fd, "rb") as fh:
            state = json.loads(fh.read())
    except (ValueError, OSError) as exc:
        raise HandoverError(f"cannot read the handed-over state: {exc}") from None
    if state.get("format") not in ACCEPTED_FORMATS:
        raise HandoverError(f"handed-over state format {state.get('format')!r} is not one "
                            f"this version reads ({sorted(ACCEPTED_FORMATS)})")
    return state
