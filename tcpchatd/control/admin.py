"""The admin channel: codec (both ends) and the Unix-socket admin server.

One JSON object per line each way::

    -> {"v":1,"id":7,"cmd":"kick","args":{"nickname":"bob","reason":"spam"}}\\n
    <- {"v":1,"id":7,"ok":true,"result":{"kicked":"bob"}}\\n
    <- {"v":1,"id":7,"ok":false,"error":{"code":"no_such_nickname","message":"..."}}\\n

Access has two layers: the socket file's mode and group (connect() fails with
EACCES for others), then SO_PEERCRED read before any request: uid 0, the
daemon's uid or an admin-group member, else `permission_denied`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import stat
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..chat.hall import EventLog
from ..wire.protocol import MAX_JSON_DEPTH, loads_bounded
from . import errors
from .errors import AdminError, AdminSocketError

VERSION = 1


# --- codec, used by tcpchatctl and the daemon alike

def encode(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def request(request_id: int, cmd: str, args: dict | None = None) -> bytes:
    return encode({"v": VERSION, "id": request_id, "cmd": cmd, "args": args or {}})


def reply_ok(request_id: Any, result: Any) -> bytes:
    return encode({"v": VERSION, "id": request_id, "ok": True, "result": result})


def reply_error(request_id: Any, code: str, message: str) -> bytes:
    return encode({"v": VERSION, "id": request_id, "ok": False,
                   "error": {"code": code, "message": message}})


def parse_request(line: bytes, max_depth: int = MAX_JSON_DEPTH) -> tuple[Any, str, dict]:
    """(id, cmd, args) of a request line, or AdminError(bad_request).

    Everything in it must be encodable again (no lone surrogates), since a reply may
    echo it: a request the daemon could not answer would leave the caller with nothing.
    """
    try:
        obj = loads_bounded(line.decode("utf-8"), max_depth)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # a lone surrogate escaped in it
    except UnicodeError:
        raise AdminError(errors.BAD_REQUEST, "request is not valid UTF-8 (or holds a lone "
                         "surrogate)") from None
    except ValueError as exc:
        raise AdminError(errors.BAD_REQUEST, f"request is not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise AdminError(errors.BAD_REQUEST, "request is not a JSON object")
    version, request_id = obj.get("v"), obj.get("id")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        raise AdminError(errors.BAD_REQUEST, f"unsupported protocol version {version!r}")
    if request_id is not None and type(request_id) not in (int, str):
        raise AdminError(errors.BAD_REQUEST, "'id' must be an integer, a string or null")
    cmd, args = obj.get("cmd"), obj.get("args", {})
    if not isinstance(cmd, str) or not isinstance(args, dict):
        raise AdminError(errors.BAD_REQUEST, "request needs a string 'cmd' and object 'args'")
    return request_id, cmd, args


def parse_reply(line: bytes) -> Any:
    """The result of a reply line, or AdminError with the daemon's code."""
    try:
        obj = loads_bounded(line.decode("utf-8"))
        if obj["ok"]:
            return obj["result"]
        error = obj["error"]
        raise AdminError(error["code"], error["message"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise AdminError(errors.INTERNAL, "the daemon sent a malformed reply") from None


class LineReader:
    """Reads newline-terminated lines of bounded length from a stream socket."""

    def __init__(self, sock: socket.socket, max_line: int) -> None:
        self._sock, self._max, self._buf = sock, max_line, b""

    def read_line(self) -> bytes | None:
        while b"\n" not in self._buf:
            if len(self._buf) > self._max:
                raise AdminError(errors.BAD_REQUEST, f"line longer than {self._max} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        if len(line) > self._max:
            raise AdminError(errors.BAD_REQUEST, f"line longer than {self._max} bytes")
        return line


def call(path: str, cmd: str, args: dict | None = None, timeout: float = 10.0) -> Any:
    """One request to the daemon at `path`; OSError when it cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(request(1, cmd, args))
        except (BrokenPipeError, ConnectionResetError):
            pass  # a caller refused is told so at once, then closed: the refusal is
            # still there to read, though the daemon went before taking the request
        line = LineReader(sock, 1 << 24).read_line()
    if line is None:
        raise AdminError(errors.INTERNAL, "the daemon closed the connection without a reply")
    return parse_reply(line)


# --- the socket file

def bind_socket(path: str, mode: int, group: str | None) -> socket.socket:
    """Create the admin socket under a umask (no chmod window), in a folder that is safe
    (see check_folder); replace a stale one."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise AdminSocketError(f"cannot create the admin socket's folder {directory}: "
                           f"{exc.strerror or exc}") from None
    check_folder(directory)
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise AdminSocketError(f"admin socket path {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens on it
        else:
            raise AdminSocketError(f"another tcpchatd answers on {path}")
        finally:
            probe.close()
    gid = resolve_group(group) if group else None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise AdminSocketError(f"cannot create admin socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, -1, gid)
    sock.listen(64)
    return sock


def check_folder(directory: str) -> None:
    """AdminSocketError unless the folder holding the admin socket is a real folder (not a
    link), owned by this user or root, and writable by nobody else unless sticky (as
    /tmp). Without XDG_RUNTIME_DIR the socket goes in /tmp/tcpchatd-UID: a folder of that
    name made by another user would let them replace the socket (and take the commands
    meant for the daemon), so it is refused, as ssh-agent refuses its own."""
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise AdminSocketError(f"admin socket folder {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise AdminSocketError(f"admin socket folder {directory} is not a folder (a link?); "
                           "remove it or set admin_socket")
    if info.st_uid not in (os.geteuid(), 0):
        raise AdminSocketError(f"admin socket folder {directory} belongs to uid {info.st_uid}, "
                           f"not to this user ({os.geteuid()}); remove it or set admin_socket")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise AdminSocketError(f"admin socket folder {directory} is writable by others (mode "
                           f"{stat.S_IMODE(info.st_mode):04o}); make it 0755 or stricter")


def resolve_group(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise AdminSocketError(f"admin group {group!r} does not exist") from None


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int


def peer_credentials(conn: socket.socket) -> Caller:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Caller(pid, uid, gid)


def caller_allowed(caller: Caller, admin_gid: int | None) -> bool:
    """uid 0, the daemon's own uid, or a member of the admin group (primary or not)."""
    if caller.uid in (0, os.geteuid()):
        return True
    if admin_gid is None:
        return False
    if caller.gid == admin_gid:
        return True
    try:
        user = pwd.getpwuid(caller.uid).pw_name
    except KeyError:
        return False
    return admin_gid in os.getgrouplist(user, caller.gid)


# --- the server

Command = Callable[[dict, Caller], Any]


class AdminSettings(Protocol):
    """What the admin server reads of the settings (replaced as a whole on reload)."""

    @property
    def admin_timeout(self) -> float: ...
    @property
    def admin_group(self) -> str | None: ...
    @property
    def admin_max_line(self) -> int: ...
    @property
    def max_json_depth(self) -> int: ...


class Deferred:
    """A command's result that comes later: run(conn, request_id) waits for it (and may
    never return: an upgrade's new image answers on the same connection)."""

    def __init__(self, run: Callable[[socket.socket, Any], Any]) -> None:
        self.run = run


ACCEPT_TIMEOUT = 0.5  # the admin accept loop turns at least this often (its heartbeat)


class AdminServer:
    """Accepts admin connections; each is served by a short-lived thread."""

    def __init__(self, sock: socket.socket, commands: dict[str, Command],
                 config: AdminSettings, log: EventLog, owned_path: str | None = None,
                 error_log: Callable[[str], None] | None = None,
                 inode: int | None = None) -> None:
        self.sock = sock
        self.commands = commands
        self.config = config
        self.log = log
        self.owned_path = owned_path  # None when systemd passed the socket in
        self.error_log = error_log
        # the file this daemon bound (handed over by an upgrade: the first image's)
        self._inode = inode if inode is not None else (
            os.stat(owned_path).st_ino if owned_path else None)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        # requests being carried out, and whether new ones are refused (an upgrade's
        # hand-over: what is answered ok must have happened in the state handed over)
        self._busy = threading.Condition()
        self._in_flight = 0
        self._quiescing = False

    def answering(self, max_age: float = 8 * ACCEPT_TIMEOUT) -> bool:
        """True when the accept loop has turned within max_age seconds (the watchdog's
        check; it turns at least every ACCEPT_TIMEOUT)."""
        return time.monotonic() - self.heartbeat <= max_age

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="admin", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        self.sock.settimeout(ACCEPT_TIMEOUT)
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name="admin client").start()
            except RuntimeError as exc:  # no thread (a task limit): say so, serve on
                self._send(conn, reply_error(None, errors.INTERNAL,
                                             f"the daemon cannot start a thread: {exc}"))
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        """One admin connection; whatever fails, the caller gets a coded reply."""
        try:
            self._serve_requests(conn)
        except Exception:
            self._internal_error("internal error on an admin connection")
            self._send(conn, reply_error(None, errors.INTERNAL,
                                         "internal error (see the daemon's log)"))
        finally:
            conn.close()

    def _internal_error(self, what: str) -> None:
        if self.error_log is not None:
            self.error_log(f"{what}:\n{traceback.format_exc()}")

    def _serve_requests(self, conn: socket.socket) -> None:
        conn.settimeout(self.config.admin_timeout)
        caller = peer_credentials(conn)
        admin_gid = resolve_group(self.config.admin_group) \
            if self.config.admin_group else None
        if not caller_allowed(caller, admin_gid):
            self.log.event("admin_refused", uid=caller.uid, pid=caller.pid)
            self._send(conn, reply_error(None, errors.PERMISSION_DENIED,
                                         f"uid {caller.uid} may not use this admin socket"))
            return
        reader = LineReader(conn, self.config.admin_max_line)
        while True:
            try:
                line = reader.read_line()
            except AdminError as exc:  # over-long line: the stream cannot go on
                self._send(conn, reply_error(None, exc.code, exc.message))
                return
            except OSError:  # idle timeout or the caller went away
                return
            if line is None:
                return
            if not self._send(conn, self._dispatch(line, caller, conn)):
                return

    def _dispatch(self, line: bytes, caller: Caller, conn: socket.socket) -> bytes:
        request_id = None
        try:
            request_id, cmd, args = parse_request(line, self.config.max_json_depth)
            command = self.commands.get(cmd)
            if command is None:
                raise AdminError(errors.UNKNOWN_COMMAND, f"unknown command: {cmd}")
            with self._busy:
                if self._quiescing:
                    raise AdminError(errors.UPGRADING, "the daemon is handing over to its new "
                                     "image: try again in a moment")
                self._in_flight += 1
            try:
                self.log.event("admin", cmd=cmd, uid=caller.uid, pid=caller.pid)
                result = command(args, caller)
            finally:
                with self._busy:
                    self._in_flight -= 1
                    self._busy.notify_all()
            if isinstance(result, Deferred):  # waits outside the count: the upgrade's own
                result = result.run(conn, request_id)
            return reply_ok(request_id, result)
        except AdminError as exc:
            return reply_error(request_id, exc.code, exc.message)
        except Exception:
            self._internal_error("internal error in admin command")
            return reply_error(request_id, errors.INTERNAL, "internal error (see the daemon's log)")

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> bool:
        try:
            conn.sendall(data)
            return True
        except OSError:
            return False

    def quiesce(self, timeout: float) -> bool:
        """For an upgrade: stop accepting (the socket left as it is: it is handed over),
        refuse every new request on the connections open (`upgrading`), and wait for the
        requests being carried out; False if some did not finish within timeout."""
        with self._busy:
            self._quiescing = True
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2 * ACCEPT_TIMEOUT)
        with self._busy:
            return self._busy.wait_for(lambda: self._in_flight == 0, timeout)

    @property
    def inode(self) -> int | None:
        return self._inode

    def close(self) -> None:
        """Stop accepting; remove the socket file only if this daemon created it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(1.0)
        self.sock.close()
        if self.owned_path:
            try:
                if os.stat(self.owned_path).st_ino == self._inode:
                    os.unlink(self.owned_path)
            except OSError:
                pass
