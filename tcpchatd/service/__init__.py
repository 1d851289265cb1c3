"""The daemon as a service: `tcpchatd`'s main, settings, systemd, pid file, traffic log,
and the generated docs. It starts and stops every other part."""
