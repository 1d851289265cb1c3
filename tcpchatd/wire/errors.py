"""Error codes shared by the boundaries.

Errors carry a code (a short stable word) and a human message; they are turned
into wire frames, admin replies or CLI lines only at the boundary that meets
the peer (net/, control/admin.py, cli/ctl.py, service/main.py). This module holds the
chat protocol's; each layer keeps its own beside it (control/errors.py,
service/errors.py, chat/bans.py's BanError, net/listeners.py's ListenError).
"""

from __future__ import annotations

# Chat protocol errors (sent in `system` frames with event "error").
BAD_HEADER = "bad_header"
FRAME_TOO_LARGE = "frame_too_large"
BAD_UTF8 = "bad_utf8"
BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_TYPE = "unknown_type"
BAD_UUID = "bad_uuid"
TEXT_TOO_LONG = "text_too_long"
UNKNOWN_UUID = "unknown_uuid"
FLOOD = "flood"
NICKNAME_TAKEN = "nickname_taken"
NICKNAME_INVALID = "nickname_invalid"
HANDSHAKE_TIMEOUT = "handshake_timeout"
SERVER_FULL = "server_full"
ADDRESS_LIMIT = "address_limit"
SEND_QUEUE_EXCEEDED = "send_queue_exceeded"
UNKNOWN_COMMAND = "unknown_command"    # also an admin error (control/errors.py)
NO_SUCH_NICKNAME = "no_such_nickname"  # also an admin error
BANNED = "banned"
BAD_HELLO = "bad_hello"  # a frame in place of the nickname that is not a valid hello
TLS_HANDSHAKE = "tls_handshake"   # logged only: the peer does not speak TLS to us
TLS_ON_PLAIN = "tls_on_plain"     # logged only: a TLS ClientHello on the plaintext port
TLS_REQUIRED = "tls_required"     # a plaintext client on the TLS port (it sent nothing)
# rooms
ROOM_NAME_INVALID = "room_name_invalid"
ROOM_NAME_TAKEN = "room_name_taken"  # it looks like the name of a room that exists
NO_SUCH_ROOM = "no_such_room"        # also an admin error (control/errors.py)
NOT_IN_ROOM = "not_in_room"
ALREADY_IN_ROOM = "already_in_room"
LAST_ROOM = "last_room"              # a client may not part the last room it is in
TOO_MANY_ROOMS = "too_many_rooms"    # max_rooms_per_client
ROOM_LIMIT = "room_limit"            # max_rooms: the daemon's list of rooms is full
TOPIC_TOO_LONG = "topic_too_long"
# the lasting history
HISTORY_OFF = "history_off"          # history_store = no (or the database could not open)
HISTORY_FAILED = "history_failed"    # the database refused a read (logged, counted)
# accounts
LOGIN_FAILED = "login_failed"            # unknown account or wrong password (not told apart)
LOGIN_THROTTLED = "login_throttled"      # too many failed logins from there or for it
NICKNAME_RESERVED = "nickname_reserved"  # an account's nickname, taken by a guest
ACCOUNT_REQUIRED = "account_required"    # require_account: guests are not let in
ACCOUNT_IN_USE = "account_in_use"        # a person's account, logged in elsewhere
NOT_PERMITTED = "not_permitted"          # a moderator's act asked by someone who is not

# Codes after which the byte stream cannot be resynchronised.
FATAL_PROTOCOL_CODES = frozenset({BAD_HEADER, FRAME_TOO_LARGE})

class CodedError(Exception):
    """An error with a stable code and a human-readable message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProtocolError(CodedError):
    """The peer sent something the chat protocol does not allow."""

    def __init__(self, code: str, message: str, uuid: str | None = None,
                 request_id: int | str | None = None) -> None:
        super().__init__(code, message)
        self.uuid = uuid  # the message that caused it, echoed back to the sender
        self.request_id = request_id  # the request that caused it, likewise

    @property
    def fatal(self) -> bool:
        """True when the connection must be closed after reporting it."""
        return self.code in FATAL_PROTOCOL_CODES
