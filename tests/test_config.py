"""config.py: one home for every setting: defaults, flags, file, environment, validation."""

import argparse

import pytest

from tcpchatd.service import config
from tcpchatd.service.config import Config
from tcpchatd.service.errors import ConfigError


def parse(argv, environ=None, file_values=None):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    return config.build(file_values or {}, vars(args), environ or {})


def test_defaults_are_the_design_cards():
    c = Config()
    assert c.listen_addresses() == [("127.0.0.1", 55555)]
    assert (c.syslog_facility, c.syslog_address, c.log_target) == ("local6", "/dev/log", "syslog")
    assert (c.max_clients, c.max_per_address, c.flood_rate, c.flood_burst) == (10000, 16, 20, 40)
    assert (c.send_queue, c.pending_confirms, c.max_text, c.max_frame) == (1 << 20, 1000, 4096,
                                                                           65536)
    assert (c.confirm_timeout, c.handshake_timeout, c.announce_joins_max) == (30, 10, 1000)
    assert c.admin_socket_mode == 0o660 and c.keepalive and c.exempt_addresses == (
        "127.0.0.0/8", "::1")
    assert (c.receipt_wait, c.error_limit) == (2, 20)


def test_every_setting_has_a_flag_and_help():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert set(config.SETTINGS) <= flags
    assert all(f.metadata["help"] for f in config.SETTINGS.values())


def test_precedence_flag_over_env_over_file():
    file_values = {"admin_socket": "/from/file", "max_text": 100}
    assert parse([], {}, file_values).admin_socket == "/from/file"
    env = {"TCPCHATD_ADMIN_SOCKET": "/from/env"}
    assert parse([], env, file_values).admin_socket == "/from/env"
    assert parse(["--admin-socket", "/from/flag"], env, file_values).admin_socket == "/from/flag"
    assert parse(["--max-text", "7"], {}, file_values).max_text == 7
    assert parse([], {}, file_values).max_text == 100


def test_lists_booleans_modes_and_addresses():
    c = parse(["--listen", "127.0.0.1:1", "--listen", "[::1]:2", "--exempt-addresses", "",
               "--no-keepalive", "--admin-socket-mode", "0600"])
    assert c.listen_addresses() == [("127.0.0.1", 1), ("::1", 2)]
    assert c.exempt_addresses == () and c.keepalive is False and c.admin_socket_mode == 0o600


@pytest.mark.parametrize("values,message", [
    ({"max_clients": 0}, "max_clients"), ({"listen": ["::1:5"]}, "IPv6"),
    ({"flood_rate": -1}, "flood_rate"), ({"syslog_facility": "kern"}, "syslog_facility"),
    ({"admin_socket_mode": "999"}, "admin_socket_mode"), ({"exempt_addresses": ["x/99"]},
                                                          "exempt_addresses"),
    ({"keepalive": "maybe"}, "keepalive"), ({"nonsense": 1}, "unknown setting"),
    ({"max_clients": "many"}, "bad value for max_clients: 'many' (expected a whole number)"),
    ({"max_clients": 5.0}, "bad value for max_clients: 5.0 (expected a whole number)"),
    ({"confirm_timeout": "soon"}, "bad value for confirm_timeout: 'soon' (expected a number)"),
    ({"max_json_depth": 65}, "must be at most 64"),
    ({"log_gather": -0.5}, "bad value for log_gather: -0.5 (must be at least 0)"),
])
def test_bad_values_are_clear_errors(values, message):
    with pytest.raises(ConfigError) as info:
        config.build(values, {}, {})
    assert message in info.value.message


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.read_file(str(tmp_path / "nope.toml"))
    assert "cannot read config file" in info.value.message
    bad = tmp_path / "bad.toml"
    bad.write_text("max_text = = 3")
    with pytest.raises(ConfigError):
        config.read_file(str(bad))
