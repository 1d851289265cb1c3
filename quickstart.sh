#!/bin/sh
# The README's quick start, for a fresh Debian 12: python3-venv (Debian's python3 refuses
# `pip install` outside a venv), a venv, the three commands on PATH (links in
# /usr/local/bin), their man pages and bash completion under /usr/local/share, the commented
# config file /etc/tcpchatd/tcpchatd.toml (kept if there is one), then the daemon in this
# terminal on its defaults, its traffic log on the screen. Ctrl-C stops it. Arguments are
# the daemon's flags: `sh quickstart.sh --listen 0.0.0.0:55555`.
set -eu
cd "$(dirname "$0")"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
VENV=${TCPCHATD_VENV:-$HOME/.local/share/tcpchatd/venv}
echo "tcpchatd quick start: installing python3-venv, then tcpchatd into $VENV"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check ".[docs]"
DOCS=$(mktemp -d)
trap 'rm -rf "$DOCS"' EXIT
"$VENV/bin/python" -m tcpchatd.service.docs "$DOCS"
for command in tcpchatd tcpchatctl tcpchat-client; do
    $SUDO ln -sf "$VENV/bin/$command" "/usr/local/bin/$command"
    $SUDO install -D -m 644 "$DOCS/completion/$command" \
        "/usr/local/share/bash-completion/completions/$command"
done
$SUDO install -D -m 644 "$DOCS/tcpchatd.8" /usr/local/share/man/man8/tcpchatd.8
for page in tcpchatctl.1 tcpchat-client.1; do
    $SUDO install -D -m 644 "$DOCS/$page" "/usr/local/share/man/man1/$page"
done
[ -e /etc/tcpchatd/tcpchatd.toml ] || \
    $SUDO install -D -m 644 "$DOCS/tcpchatd.toml" /etc/tcpchatd/tcpchatd.toml
echo "tcpchatd, tcpchatctl and tcpchat-client are on your PATH (/usr/local/bin); man"
echo "tcpchatd tells the rest; every setting is in /etc/tcpchatd/tcpchatd.toml, commented out."
echo "Starting tcpchatd with its traffic log on this screen; chat from another terminal"
echo "with: tcpchat-client    Ctrl-C stops the daemon."
rm -rf "$DOCS"
trap - EXIT
exec "$VENV/bin/tcpchatd" --log-target stderr "$@"
