"""A private network namespace for a test: its own loopback, which the test can take
down to make every peer in it stop answering (TCP keepalive's probes then go
unanswered), without touching the host's network.

A network namespace belongs to a thread (unshare(2), CLONE_NEWNET): one worker thread
enters a new one and stays there; what `run()` hands it (a socket connected, a process
started) lives in that namespace, and is used from any thread after. Unix sockets (the
admin socket, systemd's notify socket) are paths in the file system and cross it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _unshare_network() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)} (the tests run "
                      "as root, as CI does)")
    set_loopback(True)


def set_loopback(up: bool) -> None:
    """Bring this thread's namespace's `lo` up or down (ip link set lo up|down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        flags = flags | IFF_UP if up else flags & ~IFF_UP
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags))


class PrivateNetwork:
    """with PrivateNetwork() as net: net.run(callable) runs it inside the namespace."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, initializer=_unshare_network)

    def run(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._pool.submit(call, *args, **kwargs).result(60)

    def loopback(self, up: bool) -> None:
        self.run(set_loopback, up)

    def __enter__(self) -> PrivateNetwork:
        self.run(lambda: None)  # entered now: a failure to unshare shows here
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
