"""Where the daemon and tcpchatctl meet: the config file and the admin socket's path.

Read by the daemon's settings (service/config.py) and by tcpchatctl alike, so that the
command never imports the daemon's settings (nor, through them, its log writer) only to
find a socket. Imports nothing of the package.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping

DEFAULT_CONFIG_FILE = "/etc/tcpchatd/tcpchatd.toml"
ADMIN_SOCKET_ENV = "TCPCHATD_ADMIN_SOCKET"
SYSTEM_ADMIN_SOCKET = "/run/tcpchatd/admin.sock"


class ConfigFileError(Exception):
    """The config file cannot be read or parsed (one line)."""


def default_admin_socket(environ: Mapping[str, str] | None = None) -> str:
    """The path the daemon binds when no admin_socket is set."""
    environ = os.environ if environ is None else environ
    if os.geteuid() == 0:
        return SYSTEM_ADMIN_SOCKET
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "tcpchatd", "admin.sock")
    return f"/tmp/tcpchatd-{os.geteuid()}/admin.sock"


def read_config_file(path: str | None) -> dict:
    """The TOML file's keys; a missing default file is empty, a missing explicit one an
    error."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_FILE):
            return {}
        path = DEFAULT_CONFIG_FILE
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: {exc}") from None
