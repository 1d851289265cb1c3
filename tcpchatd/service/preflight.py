"""`python -m tcpchatd.service.preflight FORMAT [--record] -- DAEMON-ARGS`: the upgrade's
pre-flight.

Run by the old image in a child process, with the code now installed: every module of
the package imports, the daemon's arguments parse and its config file loads, and this
code reads the state format the old image is about to write. Exit 0 and the version on
stdout, or 1 and one line on stderr. With --record, a second line follows the version:
the settings as this code parsed them, and what the check found worth saying (JSON); the
old image hands those settings to the new one, which never reads the config file again
(a file broken between the check and the exec cannot stop it).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys


def main(argv: list[str]) -> int:
    try:
        state_format = int(argv[0])
        rest = argv[1:]
        want_record = rest[:1] == ["--record"]
        rest = rest[1:] if want_record else rest
        daemon_args = rest[1:] if rest[:1] == ["--"] else rest
    except (IndexError, ValueError):
        print("usage: python -m tcpchatd.service.preflight FORMAT [--record] -- DAEMON-ARGS",
              file=sys.stderr)
        return 2
    try:
        import tcpchatd
        for module in pkgutil.walk_packages(tcpchatd.__path__, "tcpchatd."):
            if module.name not in ("tcpchatd.__main__", "tcpchatd.service.preflight"):
                importlib.import_module(module.name)
        from tcpchatd.wire import nicknames
        nicknames.prepare()  # imported by the daemon once it serves, not with the modules
    except Exception as exc:  # a broken module: say which, in one line
        print(f"the new code does not import: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    from tcpchatd.chat.bans import BanList, BanListError
    from tcpchatd.net import handover
    from tcpchatd.service import config as config_module
    from tcpchatd.service.errors import ConfigError
    from tcpchatd.service.main import build_parser
    if state_format not in handover.ACCEPTED_FORMATS:
        print(f"the new code reads state formats {sorted(handover.ACCEPTED_FORMATS)}, "
              f"not {state_format}", file=sys.stderr)
        return 1
    try:
        args = build_parser().parse_args(daemon_args)
        config_module.absolute_config_path(args)
        config = config_module.from_args(args)
        if config.broker:  # a node of a cluster: the redis package, the password file
            from tcpchatd.cluster import redis as redis_broker
            try:
                redis_broker.check_setup(config.broker_password_path())
            except redis_broker.BrokerSetupError as exc:
                raise ConfigError(str(exc)) from None
    except SystemExit:
        print("the daemon's arguments do not parse with the new code", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"the config does not load: {exc.message}", file=sys.stderr)
        return 1
    from tcpchatd.chat.accounts import AccountBook, AccountFileError
    try:  # the running book is handed over; a book that does not parse is refused here,
        AccountBook(config.state_dir_path()).load()  # as at a start
    except AccountFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    warnings = []
    try:  # the running list is handed over, but a restart would read this file
        BanList(config.state_dir_path()).load()
    except BanListError as exc:
        warnings.append(f"{exc} (the upgrade carries the running list; a restart "
                        "would not start)")
    print(tcpchatd.__version__)
    if want_record:
        print(json.dumps({"config": config_module.record(config), "warnings": warnings}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
