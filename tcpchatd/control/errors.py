"""The admin channel's errors: codes that tcpchatctl maps to its exit status, and the
admin socket that cannot be made. Formatted at the boundary only (admin.py's replies,
ctl.py's one line)."""

from __future__ import annotations

from ..wire.errors import NO_SUCH_NICKNAME, NO_SUCH_ROOM, NOT_IN_ROOM, UNKNOWN_COMMAND, CodedError

__all__ = ["ACCOUNT_EXISTS", "NO_SUCH_ACCOUNT", "AdminError", "AdminSocketError",
           "BAD_REQUEST", "INTERNAL", "NO_SUCH_BAN",
           "NO_SUCH_NICKNAME", "NO_SUCH_ROOM", "NOT_IN_ROOM", "PERMISSION_DENIED",
           "UNKNOWN_COMMAND", "UPGRADE_FAILED", "UPGRADE_REFUSED", "UPGRADING"]

BAD_REQUEST = "bad_request"
NO_SUCH_ACCOUNT = "no_such_account"
ACCOUNT_EXISTS = "account_exists"
NO_SUCH_BAN = "no_such_ban"
UPGRADE_REFUSED = "upgrade_refused"
UPGRADE_FAILED = "upgrade_failed"  # the new image could not start: its clients were told
UPGRADING = "upgrading"          # a request during an upgrade's hand-over: try again
PERMISSION_DENIED = "permission_denied"
INTERNAL = "internal"


class AdminError(CodedError):
    """An admin request failed; the code goes back to tcpchatctl."""


class AdminSocketError(Exception):
    """The admin socket cannot be made or used (one line; the daemon does not start)."""
