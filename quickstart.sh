#!/bin/sh
# The README's quick start, for a fresh Debian 12: python3-venv (Debian's python3 refuses
# `pip install` outside a venv), a venv, the three commands on PATH (/usr/local/bin), then
# the daemon in this terminal on its defaults, its traffic log on the screen. Ctrl-C stops it.
set -eu
cd "$(dirname "$0")"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
VENV=${TCPCHATD_VENV:-$HOME/.local/share/tcpchatd/venv}
echo "tcpchatd quick start: installing python3-venv, then tcpchatd into $VENV"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check .
for command in tcpchatd tcpchatctl tcpchat-client; do
    $SUDO ln -sf "$VENV/bin/$command" "/usr/local/bin/$command"
done
echo "tcpchatd, tcpchatctl and tcpchat-client are on your PATH (/usr/local/bin)."
echo "Starting tcpchatd with its traffic log on this screen; chat from another terminal"
echo "with: tcpchat-client    Ctrl-C stops the daemon."
exec "$VENV/bin/tcpchatd" --log-target stderr "$@"
