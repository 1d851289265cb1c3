"""Every setting of tcpchatd: its name, flag, default, validator and help, in one place.

A setting has a flag (`--kebab-case`), a key of the same name in snake_case in the
TOML config file, and one default. Precedence: flag > environment (only
TCPCHATD_ADMIN_SOCKET) > config file > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..control.paths import (
    ADMIN_SOCKET_ENV,
    DEFAULT_CONFIG_FILE,
    ConfigFileError,
    default_admin_socket,
    read_config_file,
)
from ..wire.errors import ProtocolError
from ..wire.nicknames import check_room_name
from .errors import ConfigError
from .trafficlog import FACILITIES as SYSLOG_FACILITIES

SYSTEM_PID_FILE = "/run/tcpchatd.pid"
CHAT_PORT = 55555



# --- value parsers: each takes a flag string or a TOML value, returns the value or
# raises ValueError

def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("expected a whole number")
        try:
            number = int(value, 0) if isinstance(value, str) else value
        except ValueError:
            raise ValueError("expected a whole number") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}")
        return number
    return parse


def _float(minimum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("expected a number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
        if not number >= minimum:  # also rejects NaN
            raise ValueError(f"must be at least {minimum}")
        return number
    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)
    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "yes", "true", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected true or false")


def _optional_str(value: Any) -> str | None:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value or None


def _mode(value: Any) -> int:
    try:
        mode = int(value, 8) if isinstance(value, str) else _int(0)(value)
    except ValueError:
        raise ValueError("must be a permission mode such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError("must be a permission mode such as 0660")
    return mode


def _items(value: Any) -> list[str]:
    """A TOML list, or flag values that may each hold a comma-separated list."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return [item.strip() for v in value for item in v.split(",") if item.strip()]


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address as [ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: bad port")
    return host, int(port_text)


def _addresses(value: Any) -> tuple[str, ...]:
    items = _items(value)
    if not items:
        raise ValueError("at least one address is needed")
    for item in items:
        parse_address(item)
    return tuple(items)


def _optional_addresses(value: Any) -> tuple[str, ...]:
    items = _items(value)
    for item in items:
        parse_address(item)
    return tuple(items)


_ORIGIN = re.compile(r"https?://[^/\s?#]+\Z")


def _origins(value: Any) -> tuple[str, ...]:
    """Web origins as a browser sends them: scheme and host (and port), no path."""
    items = _items(value)
    for item in items:
        if not _ORIGIN.match(item):
            raise ValueError(f"{item!r} is not an origin such as https://chat.example.com")
    return tuple(items)


def _networks(value: Any) -> tuple[str, ...]:
    items = _items(value)
    for item in items:
        ipaddress.ip_network(item, strict=False)
    return tuple(items)


def _broker(value: Any) -> str | None:
    """`redis://HOST:PORT/DB` or `rediss://...`; a password in it is refused (it would
    show in `ps` and in the unit): broker_password_file or the credential holds it."""
    url = _optional_str(value)
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss") or not rest:
        raise ValueError("expected redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
    if "@" in rest.split("/")[0]:
        raise ValueError("no password in the URL: use broker_password_file or the "
                         "systemd credential broker.password")
    return url


def _name(value: Any) -> str | None:
    """A room or node name: it becomes part of Redis keys and log lines."""
    text = _optional_str(value)
    if text is not None and not re.fullmatch(r"[A-Za-z0-9_.:@+-]{1,64}", text):
        raise ValueError("use 1 to 64 letters, digits and _ . : @ + -")
    return text


def _host_name(value: Any) -> str:
    """A name IRC puts in every prefix: letters, digits, dots and dashes."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", value):
        raise ValueError("use 1 to 63 letters, digits, dots and dashes")
    return value


def _room(value: Any) -> str:
    text = _name(value)
    if text is None:
        raise ValueError("a cluster needs a name")
    return text


# settings renamed since: their old names are still taken (files, flags, an upgrade's
# handed-over settings)
RENAMED = {"room": "cluster"}


MAX_ROOM_NAME = 32  # the default of max_room_name; a declared room's name is held to it


def _chat_room(value: Any) -> str:
    """A chat room's name, as clients may write it (`#dev` or `dev`)."""
    if not isinstance(value, str):
        raise ValueError("expected a room's name")
    try:
        return check_room_name(value, MAX_ROOM_NAME)
    except ProtocolError as exc:
        raise ValueError(exc.message) from None


def _chat_rooms(value: Any) -> tuple[str, ...]:
    return tuple(_chat_room(item) for item in _items(value))


def _optional_metrics(value: Any) -> str | None:
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT")
    if not value:
        return None
    parse_address(value)  # ValueError: not HOST:PORT
    return value


def _facility(value: Any) -> str:
    if value not in SYSLOG_FACILITIES:
        raise ValueError(f"must be one of {', '.join(SYSLOG_FACILITIES)}")
    return str(value)


def setting(default: Any, help: str, parse: Callable[[Any], Any], *,
            repeat: bool = False, metavar: str | None = None, shown: str | None = None) -> Any:
    """Declare one setting: default, help text and parser live together; `shown` is how
    --help shows the default when str() would not do (a mode, a computed path)."""
    return field(default=default, metadata={"help": help, "parse": parse, "repeat": repeat,
                                            "metavar": metavar, "shown": shown})


@dataclass(frozen=True)
class Config:
    """The daemon's settings; replaced as a whole on reload, never mutated."""

    listen: tuple[str, ...] = setting(
        (f"127.0.0.1:{CHAT_PORT}",), "chat address HOST:PORT or [V6]:PORT (repeatable); "
        "unused when systemd passes sockets", _addresses, repeat=True, metavar="ADDR")
    listen_tls: tuple[str, ...] = setting(
        (), "TLS chat address HOST:PORT or [V6]:PORT (repeatable; '' for none); unused "
        "when systemd passes sockets", _optional_addresses, repeat=True, metavar="ADDR",
        shown="none")
    listen_web: tuple[str, ...] = setting(
        (), "HTTP address HOST:PORT of the browser client: the page and its WebSocket "
        "(repeatable; '' for none); unused when systemd passes sockets", _optional_addresses,
        repeat=True, metavar="ADDR", shown="none")
    listen_web_tls: tuple[str, ...] = setting(
        (), "HTTPS address HOST:PORT of the browser client (wss://; needs the TLS pair; "
        "repeatable; '' for none); unused when systemd passes sockets", _optional_addresses,
        repeat=True, metavar="ADDR", shown="none")
    listen_irc: tuple[str, ...] = setting(
        (), "IRC address HOST:PORT: IRC clients in the rooms as channels (repeatable; '' for "
        "none); unused when systemd passes sockets", _optional_addresses, repeat=True,
        metavar="ADDR", shown="none")
    listen_irc_tls: tuple[str, ...] = setting(
        (), "IRC over TLS address HOST:PORT (needs the TLS pair; repeatable; '' for none); "
        "unused when systemd passes sockets", _optional_addresses, repeat=True,
        metavar="ADDR", shown="none")
    irc_server_name: str = setting(
        "tcpchatd", "the server's name IRC clients see (in prefixes and numerics)",
        _host_name, metavar="NAME")
    web_origins: tuple[str, ...] = setting(
        (), "origins besides the page's own whose pages may open a WebSocket (a reverse "
        "proxy's public address, e.g. https://chat.example.com; comma-separated)", _origins,
        repeat=True, metavar="ORIGINS", shown="none: the page's own origin only")
    tls_cert: str | None = setting(
        None, "PEM certificate (with its chain) for the TLS port", _optional_str,
        metavar="PATH", shown="$CREDENTIALS_DIRECTORY/tls.crt under systemd, else none")
    tls_key: str | None = setting(
        None, "PEM private key for the TLS port", _optional_str, metavar="PATH",
        shown="$CREDENTIALS_DIRECTORY/tls.key under systemd, else none")
    tls_min_version: str = setting("1.2", "oldest TLS version accepted", _choice("1.2", "1.3"))
    admin_socket: str | None = setting(
        None, "admin socket path (default /run/tcpchatd/admin.sock as root, else "
        "$XDG_RUNTIME_DIR/tcpchatd/admin.sock, else /tmp/tcpchatd-$UID/admin.sock)",
        _optional_str, metavar="PATH", shown="computed as above")
    admin_socket_mode: int = setting(0o660, "admin socket permission mode (octal)", _mode,
                                     metavar="MODE", shown="0660")
    admin_group: str | None = setting(None, "group whose members may use the admin socket",
                                      _optional_str, metavar="GROUP")
    pid_file: str | None = setting(None, "pid file written with --daemon", _optional_str,
                                   metavar="PATH", shown="/run/tcpchatd.pid as root, else "
                                   "beside the per-user admin socket")
    state_dir: str | None = setting(
        None, "where lasting state (bans.json, accounts.json) is kept", _optional_str,
        metavar="PATH",
        shown="$STATE_DIRECTORY under systemd, else /var/lib/tcpchatd as root, else "
        "$XDG_STATE_HOME/tcpchatd (~/.local/state/tcpchatd)")
    syslog_facility: str = setting("local6", "syslog facility of the traffic log", _facility)
    syslog_address: str = setting("/dev/log", "syslog socket path", _optional_str,
                                  metavar="PATH")
    log_target: str = setting("syslog", "where the traffic log goes", _choice("syslog", "stderr"))
    log_confirms: str = setting("summary", "'each' logs one line per confirm",
                                _choice("summary", "each"))
    log_queue: int = setting(10_000, "log lines queued before lines are dropped", _int(1))
    log_gather: float = setting(
        0.02, "seconds an idle log writer lets lines gather before it writes them (one "
        "wake-up of the writer per batch under load; 0: each line at once)", _float(0),
        metavar="SECONDS")
    max_clients: int = setting(10_000, "most clients connected at once", _int(1))
    max_per_address: int = setting(16, "most clients from one IP address", _int(1))
    exempt_addresses: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1"), "networks not counted by max_per_address (comma-separated; "
        "'' for none)", _networks, repeat=True, metavar="NETS")
    flood_rate: float = setting(20.0, "messages per second per client (0 disables)", _float(0))
    flood_burst: int = setting(40, "messages a client may send at once", _int(1))
    send_queue: int = setting(1 << 20, "bytes queued for one client before it is disconnected",
                              _int(1024))
    send_buffer: int = setting(
        64 * 1024, "SO_SNDBUF of each client socket in bytes (the kernel doubles it; 0 = "
        "the kernel's autotuning, up to 4 MiB a client)", _int(0))
    stall_timeout: float = setting(
        60.0, "seconds a client may take nothing of what is due to it before it is "
        "disconnected (reason stalled; 0 = never)", _float(0))
    pending_confirms: int = setting(1000, "receipts pending per recipient", _int(1))
    confirm_timeout: float = setting(30.0, "seconds to wait for receipts", _float(0.01))
    receipt_wait: float = setting(2.0, "seconds after a message's first confirm until its "
                                  "sender gets the receipt with the confirms so far",
                                  _float(0.01))
    error_limit: int = setting(20, "protocol errors a client may make in 10 s; one more and "
                               "it leaves with reason 'errors'", _int(1))
    handshake_timeout: float = setting(10.0, "seconds to send a nickname", _float(0.01))
    tls_hello_wait: float = setting(
        2.0, "seconds a client on the TLS port may stay silent; then it is taken for a "
        "plaintext client, told (tls_required, in plaintext) and closed", _float(0.01))
    max_text: int = setting(4096, "bytes of message text", _int(1))
    max_frame: int = setting(65536, "bytes of frame body", _int(64))
    max_json_depth: int = setting(
        32, "levels of nested objects and arrays in a frame or admin request (checked before "
        "parsing, so deep input cannot exhaust a thread's stack)", _int(2, 64))
    max_nickname: int = setting(32, "characters of a nickname", _int(1))
    default_room: str = setting(
        "general", "the room every client is in when it joins (the only one the original "
        "client sees); a change takes effect at the next start", _chat_room, metavar="ROOM")
    rooms: tuple[str, ...] = setting(
        (), "rooms that always exist, even empty (comma-separated, repeatable)", _chat_rooms,
        repeat=True, metavar="ROOMS", shown="none")
    room_create: str = setting(
        "anyone", "who makes a room by joining one that does not exist: 'anyone', or "
        "'admin' (only the rooms of the config exist)", _choice("anyone", "admin"))
    max_rooms: int = setting(1000, "rooms at most (an empty room that is not declared "
                             "goes)", _int(1))
    max_rooms_per_client: int = setting(20, "rooms one client may be in at once", _int(1))
    max_room_name: int = setting(MAX_ROOM_NAME, "characters of a room's name", _int(1,
                                                                                   MAX_ROOM_NAME))
    max_topic: int = setting(390, "bytes of a room's topic", _int(0))
    history: int = setting(20, "public messages a joiner is shown (0 = off)", _int(0))
    history_store: bool = setting(
        True, "keep every public message in SQLite (state_dir/history.sqlite3) for "
        "scrollback and search", _bool)
    history_days: float = setting(365.0, "days a message is kept (0 = for ever)", _float(0))
    history_max: int = setting(100_000, "messages kept per room at most (0 = no limit)",
                               _int(0))
    history_private: bool = setting(False, "keep private messages too", _bool)
    history_page: int = setting(100, "messages in one page of scrollback at most", _int(1))
    search_results: int = setting(50, "matches one search returns at most", _int(1))
    history_queue: int = setting(100_000, "messages waiting for the history writer at "
                                 "most (beyond: not kept, counted)", _int(100))
    history_bytes: int = setting(16384, "bytes of the history frame's body at most (older "
                                 "messages left out)", _int(256))
    announce_joins_max: int = setting(1000, "above this many clients joins and leaves are "
                                      "only logged", _int(0))
    ban_force_over: int = setting(
        3, "members a ban may kick without --force (a wide ban names who it would kick "
        "and asks)", _int(0))
    nick_reservation: str = setting(
        "strict", "'strict': an account's nickname is taken only by logging in to it; "
        "'off': accounts reserve nothing", _choice("strict", "off"))
    require_account: bool = setting(
        False, "let in only clients that log in to an account (guests, the original client "
        "among them, are refused with a notice)", _bool)
    topic_by: str = setting(
        "anyone", "who may set a room's topic from a client: 'anyone' in the room, or "
        "'moderator' (the admin socket always may)", _choice("anyone", "moderator"))
    login_threads: int = setting(2, "threads that hash and check passwords (never an event "
                                 "loop)", _int(1, 16))
    login_free_failures: int = setting(
        5, "failed logins from one address, or for one account, before each further "
        "attempt must wait (1 s, doubling)", _int(1))
    login_backoff_max: float = setting(300.0, "seconds a failing address or account waits "
                                       "at most between attempts", _float(1))
    keepalive: bool = setting(True, "TCP keepalive on client sockets", _bool)
    keepalive_idle: int = setting(60, "seconds a client connection is silent before TCP "
                                  "keepalive asks its peer", _int(1, 32767))
    keepalive_interval: int = setting(10, "seconds between keepalive probes", _int(1, 32767))
    keepalive_probes: int = setting(6, "keepalive probes unanswered before a client is "
                                    "taken for gone (it leaves with reason timeout)",
                                    _int(1, 127))
    shutdown_grace: float = setting(2.0, "seconds to flush clients at shutdown", _float(0))
    io_threads: int = setting(1, "event-loop threads that own the client connections",
                              _int(1, 16))
    broker: str | None = setting(
        None, "redis://HOST:PORT/DB (rediss:// for TLS): serve every room with every node "
        "on that Redis; none = this process alone", _broker, metavar="URL")
    broker_password_file: str | None = setting(
        None, "file holding the broker's password", _optional_str, metavar="PATH",
        shown="$CREDENTIALS_DIRECTORY/broker.password under systemd, else none")
    broker_ca: str | None = setting(None, "CA certificates (PEM) for a rediss:// broker",
                                    _optional_str, metavar="PATH")
    cluster: str = setting("tcpchat", "the cluster's name: its nodes share it (several "
                           "clusters can share one Redis); the old name of this setting, "
                           "room, is still taken", _room, metavar="NAME")
    node_name: str | None = setting(None, "this node's name in the cluster", _name,
                                    metavar="NAME", shown="host name + PID")
    node_ttl: float = setting(10.0, "seconds of silence after which a node is lost and its "
                              "members leave", _float(0.5))
    broker_stream: int = setting(10_000, "events the room's Redis stream keeps (approximate)",
                                 _int(100))
    listen_metrics: str | None = setting(
        None, "HOST:PORT where Prometheus scrapes /metrics (none: no metrics; keep it on "
        "127.0.0.1 unless the scraper is elsewhere)", _optional_metrics, metavar="ADDR",
        shown="none")
    thread_stack: int = setting(256 * 1024, "thread stack size in bytes", _int(32768))
    admin_max_line: int = setting(65536, "bytes of one admin request line", _int(256))
    admin_timeout: float = setting(60.0, "seconds an idle admin connection stays open",
                                   _float(0.01))

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_address(text) for text in self.listen]

    def tls_listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_address(text) for text in self.listen_tls]

    def door_addresses(self, kind: str) -> list[tuple[str, int]]:
        """Where a door of this kind (web, web-tls, irc, irc-tls) listens."""
        texts = getattr(self, "listen_" + kind.replace("-", "_"))
        return [parse_address(text) for text in texts]

    def tls_cert_path(self, environ: Mapping[str, str] | None = None) -> str | None:
        return self.tls_cert or credential("tls.crt", environ)

    def tls_key_path(self, environ: Mapping[str, str] | None = None) -> str | None:
        return self.tls_key or credential("tls.key", environ)

    def broker_password_path(self, environ: Mapping[str, str] | None = None) -> str | None:
        return self.broker_password_file or credential("broker.password", environ)

    def node(self) -> str:
        """This node's name: the setting, else host name + PID (stable across an
        upgrade's exec, which keeps the PID)."""
        return self.node_name or f"{socket.gethostname()}+{os.getpid()}"

    def admin_socket_path(self) -> str:
        return self.admin_socket or default_admin_socket()

    def state_dir_path(self) -> str:
        return self.state_dir or default_state_dir()

    def pid_file_path(self) -> str:
        if self.pid_file:
            return self.pid_file
        if os.geteuid() == 0:
            return SYSTEM_PID_FILE
        return os.path.join(os.path.dirname(default_admin_socket()), "tcpchatd.pid")


SETTINGS = {f.name: f for f in dataclasses.fields(Config)}


def credential(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A credential systemd passed (LoadCredential=), if it did."""
    environ = os.environ if environ is None else environ
    folder = environ.get("CREDENTIALS_DIRECTORY")
    return os.path.join(folder, name) if folder else None


def default_state_dir(environ: Mapping[str, str] | None = None) -> str:
    """systemd's StateDirectory= (the first, if several), /var/lib/tcpchatd as root, else
    the XDG state folder."""
    environ = os.environ if environ is None else environ
    if environ.get("STATE_DIRECTORY"):
        return environ["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/tcpchatd"
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                         "state")
    return os.path.join(base, "tcpchatd")


def add_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add `--config` and one flag per setting; unset flags stay None."""
    parser.add_argument("--config", metavar="PATH",
                        help=f"TOML config file (default {DEFAULT_CONFIG_FILE} if it exists)")
    for name, f in SETTINGS.items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        old = [f"--{o}" for o, n in RENAMED.items() if n == name]  # hidden aliases
        meta = f.metadata
        help_text = f"{meta['help']} (default: {meta['shown'] or _show(f.default)})"
        if meta["parse"] is _bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            for option, shown in ((flag, help_text), *((o, argparse.SUPPRESS) for o in old)):
                parser.add_argument(option, dest=name, default=None, help=shown,
                                    metavar=meta["metavar"] or name.upper(),
                                    action="append" if meta["repeat"] else "store")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return "none" if value is None else str(value).replace("%", "%%")


def read_file(path: str | None) -> dict[str, Any]:
    """The TOML file's keys (control/paths.py reads it: tcpchatctl reads it too)."""
    try:
        return read_config_file(path)
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None


def build(file_values: Mapping[str, Any], flag_values: Mapping[str, Any] | None = None,
          environ: Mapping[str, str] | None = None, source: str = "config file") -> Config:
    """Merge default < file < environment < flags and validate every value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, raw in file_values.items():
        key = RENAMED.get(key, key)
        if key not in SETTINGS:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        values[key] = _parse(key, raw, source)
    if environ.get(ADMIN_SOCKET_ENV):
        values["admin_socket"] = _parse("admin_socket", environ[ADMIN_SOCKET_ENV], ADMIN_SOCKET_ENV)
    for key, raw in (flag_values or {}).items():
        if raw is not None and key in SETTINGS:
            values[key] = _parse(key, raw, "--" + key.replace("_", "-"))
    return Config(**values)


def _parse(key: str, raw: Any, source: str) -> Any:
    try:
        return SETTINGS[key].metadata["parse"](raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: bad value for {key}: {raw!r} ({exc})") from None


def record(config: Config) -> dict[str, Any]:
    """The settings as plain JSON values (an upgrade's pre-flight hands them over)."""
    return dataclasses.asdict(config)


def from_record(values: Mapping[str, Any]) -> Config:
    """The settings record() wrote, checked again by this code's validators."""
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        key = RENAMED.get(key, key)
        if key not in SETTINGS:
            raise ConfigError(f"handed-over settings: unknown setting {key!r}")
        parsed[key] = None if raw is None else _parse(key, raw, "handed-over settings")
    return Config(**parsed)


def absolute_config_path(args: argparse.Namespace) -> None:
    """Resolve a relative --config now: a detached daemon runs in /, and every reload
    reads the file again."""
    if getattr(args, "config", None):
        args.config = os.path.abspath(args.config)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The Config for parsed command-line flags (reads the config file they name)."""
    return build(read_file(args.config), vars(args), environ,
                 source=args.config or DEFAULT_CONFIG_FILE)
