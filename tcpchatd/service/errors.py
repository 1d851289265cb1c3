"""The daemon's own errors, turned into an exit status and one line by main.py."""

from __future__ import annotations

from ..wire.errors import CodedError


class ConfigError(CodedError):
    """A setting is unknown or has a bad value (startup exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__("config", message)


class StartupError(CodedError):
    """The daemon cannot start: a port in use, a bad inherited fd, a live pid file
    (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__("startup", message)
