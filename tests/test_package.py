"""The Debian package as an operator gets it (issue 17): `.ci/run` builds it from the tree
(dpkg-buildpackage), runs lintian, installs it with `apt-get install ./tcpchatd_*.deb`,
runs this suite, then purges it and checks what is left.

What the maintainer scripts do only where systemd runs as PID 1 (sockets started on
install, rsyslog restarted, a package upgrade made hitless, removal stopping the units) is
tested on a machine booted with systemd (systemd_lab.Machine): the package installed,
upgraded, removed and purged there, over an overlay of this host's root."""

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from rawclient import RawClient, wait_for
from systemd_lab import Machine, UserManager
from wsclient import WsClient, http_get
from test_systemd_real import LAB_RESETS
from test_upgrade import chat_through

SBIN = "/usr/sbin/tcpchatd"
UNIT_DIR = "/lib/systemd/system"
UNITS = ("tcpchatd.service", "tcpchatd.socket", "tcpchatd-admin.socket", "tcpchatd-tls.socket",
         "tcpchatd-web.socket", "tcpchatd-web-tls.socket", "tcpchatd-irc.socket",
         "tcpchatd-irc-tls.socket", "tcpchatd-metrics.socket")
DEBIAN_PYTHON = "/usr/bin/python3"


def dpkg_query(field: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", f"-f=${{{field}}}", "tcpchatd"],
                            capture_output=True, text=True)
    assert result.returncode == 0, "the tcpchatd package is not installed: run .ci/run, " \
                                   "which builds and installs it"
    return result.stdout


@pytest.fixture(scope="module")
def installed():
    assert dpkg_query("Status") == "install ok installed"
    return dpkg_query("Version")


def test_the_commands_run_on_debian_s_python(installed):
    from tcpchatd import __version__
    assert installed == __version__
    for path, name in ((SBIN, "tcpchatd"), ("/usr/bin/tcpchatctl", "tcpchatctl"),
                       ("/usr/bin/tcpchat-client", "tcpchat-client")):
        with open(path) as fh:
            assert fh.readline().strip() == f"#!{DEBIAN_PYTHON}"  # not a venv, not pip
        result = subprocess.run([path, "--version"], capture_output=True, text=True,
                                timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert (result.returncode, result.stdout) == (0, f"{name} {__version__}\n")
    depends = dpkg_query("Depends")
    for debian_package in ("python3-daemon", "python3-sdnotify", "python3-prompt-toolkit",
                           "python3-regex"):
        assert debian_package in depends
    assert "python3-redis" in dpkg_query("Suggests")
    assert {"rsyslog", "logrotate", "python3-wsproto"} <= set(
        re.split(r",\s*", dpkg_query("Recommends")))


def test_user_group_units_rule_logrotate_and_conffiles(installed):
    user = pwd.getpwnam("tcpchatd")
    assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin")  # a system user
    grp.getgrnam("tcpchatd-admin")
    for unit in UNITS:
        with open(os.path.join(UNIT_DIR, unit)) as fh:
            text = fh.read()
        if unit == "tcpchatd.service":
            assert f"ExecStart={SBIN}\n" in text
    verify = subprocess.run(["systemd-analyze", "verify", *(os.path.join(UNIT_DIR, u)
                                                           for u in UNITS)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    conffiles = dpkg_query("Conffiles")
    for path in ("/etc/rsyslog.d/30-tcpchatd.conf", "/etc/logrotate.d/tcpchatd",
                 "/etc/tcpchatd/tcpchatd.toml"):
        assert os.path.exists(path) and path in conffiles
    # the drop-in that makes this machine a node of a cluster (test_cluster_systemd.py)
    with open("/usr/share/doc/tcpchatd/examples/cluster-node.conf") as fh:
        assert "LoadCredential=broker.password:" in fh.read()
    with open("/usr/lib/sysusers.d/tcpchatd.conf") as fh:
        assert "tcpchatd-admin" in fh.read()
    enabled = os.listdir("/etc/systemd/system/sockets.target.wants")
    assert {"tcpchatd.socket", "tcpchatd-admin.socket"} <= set(enabled)
    assert "tcpchatd-tls.socket" not in enabled  # TLS waits for the operator's certificate
    for door in ("web", "web-tls", "irc", "irc-tls", "metrics"):  # the operator's choice
        assert f"tcpchatd-{door}.socket" not in enabled


def test_the_config_file_lists_every_setting_commented_and_loads(installed):
    from tcpchatd.service import config, docs
    with open("/etc/tcpchatd/tcpchatd.toml") as fh:
        text = fh.read()
    assert text == docs.config_file()  # generated from the config module: cannot drift
    for name in config.SETTINGS:
        assert re.search(rf"^#{name} = ", text, re.M), name
    uncommented = "\n".join(line[1:] if re.match(r"#[a-z_]+ = ", line) and '"..."' not in line
                            else line for line in text.splitlines())
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sys, tomllib; from tcpchatd.service import config; "
         "c = config.build(tomllib.loads(sys.stdin.read())); print(c == config.Config())"],
        input=uncommented, capture_output=True, text=True, timeout=30, cwd="/")
    assert probe.stdout.strip() == "True", probe.stderr  # every default, as the code has it


def test_man_pages_and_bash_completion(installed):
    for name, section in (("tcpchatd", 8), ("tcpchatctl", 1), ("tcpchat-client", 1)):
        page = subprocess.run(["man", "-P", "cat", str(section), name], capture_output=True,
                              text=True, timeout=30, env=dict(os.environ, MANWIDTH="100"))
        assert page.returncode == 0, page.stderr
        assert "EXIT STATUS" in page.stdout and "--version" in page.stdout
    ctl_page = subprocess.run(["man", "-P", "cat", "1", "tcpchatctl"], capture_output=True,
                              text=True).stdout
    assert "permission denied" in ctl_page and "/run/tcpchatd/admin.sock" in ctl_page
    completion = subprocess.run(
        ["bash", "-c", "source /usr/share/bash-completion/completions/tcpchatctl; "
         "COMP_WORDS=(tcpchatctl ba); COMP_CWORD=1; _tcpchatctl; echo ${COMPREPLY[@]}; "
         "COMP_WORDS=(tcpchatctl ban --f); COMP_CWORD=2; _tcpchatctl; echo ${COMPREPLY[@]}"],
        capture_output=True, text=True, timeout=30)
    assert completion.stdout.splitlines() == ["ban bans", "--for --force"]


@pytest.fixture(scope="module")
def lab(installed):
    """The INSTALLED units under a real systemd; the drop-in names a free port and an
    admin path, a short watchdog and the two resets a per-user manager needs."""
    manager = UserManager().start()
    try:
        admin_path = os.path.join(manager.base, "admin", "admin.sock")
        with socket.socket() as s, socket.socket() as w:
            s.bind(("127.0.0.1", 0))
            w.bind(("127.0.0.1", 0))
            port, web_port = s.getsockname()[1], w.getsockname()[1]
        drop_ins = {
            "tcpchatd-web.socket": f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{web_port}\n","tcpchatd.service": "[Service]\nWatchdogSec=2\n" + LAB_RESETS,
                    "tcpchatd.socket": f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
                    "tcpchatd-admin.socket": f"[Socket]\nListenStream=\nListenStream={admin_path}\n"}
        for unit, text in drop_ins.items():
            os.makedirs(os.path.join(manager.unit_dir, f"{unit}.d"))
            with open(os.path.join(manager.unit_dir, f"{unit}.d", "lab.conf"), "w") as fh:
                fh.write(text)
        for unit in UNITS:
            manager.systemctl("link", os.path.join(UNIT_DIR, unit))
        manager.systemctl("daemon-reload")
        manager.port, manager.admin_path, manager.web_port = port, admin_path, web_port
        yield manager
    finally:
        manager.stop()


def installed_ctl(lab, *args):
    return subprocess.run(["/usr/bin/tcpchatctl", "--admin-socket", lab.admin_path, *args],
                          capture_output=True, text=True, timeout=30, cwd="/",
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_the_installed_units_serve_under_systemd(lab):
    lab.systemctl("start", "tcpchatd.socket", "tcpchatd-admin.socket", "tcpchatd-web.socket")
    try:
        client = RawClient(lab.port, timeout=15)  # socket activation starts the service
        assert client.join("operator")["nickname"] == "operator"
        # the browser's page and WebSocket, on Debian's python3-wsproto and h11
        status, _, page = http_get(lab.web_port, "/")
        assert status == 200 and b'<script src="/app.js"' in page
        browser = WsClient(lab.web_port)
        browser.join("webby")
        client.read_until(lambda f: f.get("event") == "join")
        said = browser.say("from a browser on the installed package")
        assert client.read_until(lambda f: f.get("type") == "message")["uuid"] == said
        client.confirm(said)
        assert browser.read_until(lambda f: f.get("type") == "confirm")["delivered"] == 1
        browser.close()
        client.read_until(lambda f: f.get("event") == "leave")
        pid = lab.main_pid("tcpchatd.service")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        assert argv[:2] == [DEBIAN_PYTHON.encode(), SBIN.encode()]
        who = installed_ctl(lab, "who", "--json")
        assert who.returncode == 0, who.stderr
        assert [c["nickname"] for c in json.loads(who.stdout)["clients"]] == ["operator"]
        assert installed_ctl(lab, "ban", "troll").returncode == 0
        lab.systemctl("restart", "tcpchatd.service")
        bans = json.loads(installed_ctl(lab, "bans", "--json").stdout)["bans"]
        assert [b["target"] for b in bans] == ["troll"]  # StateDirectory= kept them
        lab.systemctl("stop", "tcpchatd.service")
        assert lab.show("tcpchatd.service", "Result") == "success"
    finally:
        lab.systemctl("stop", *UNITS, check=False)


# --- on a machine booted with systemd

PACKAGE_DIR = "/usr/lib/python3/dist-packages/tcpchatd"
MACHINE_PORT = 55555  # the shipped socket's, inside the machine's own network
TRAFFIC_LOG = "/var/log/tcpchatd.log"


@pytest.fixture(scope="module")
def deb():
    path = os.environ.get("TCPCHATD_DEB", "")
    assert os.path.isfile(path), "TCPCHATD_DEB names no built package: run .ci/run, " \
                                 "which builds it and runs this suite"
    return path


def repacked(deb: str, into: str, version: str, edit=None) -> str:
    """The built package as a newer version, what an `apt upgrade` would bring: its
    control file and __version__ bumped, `edit(tree)` applied, md5sums rewritten."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        tree = os.path.join(work, "tree")
        subprocess.run(["dpkg-deb", "-R", deb, tree], check=True)
        control = os.path.join(tree, "DEBIAN", "control")
        with open(control) as fh:
            text = re.sub(r"^Version: .*$", f"Version: {version}", fh.read(), flags=re.M)
        with open(control, "w") as fh:
            fh.write(text)
        init = os.path.join(tree, PACKAGE_DIR.lstrip("/"), "__init__.py")
        with open(init) as fh:
            text = re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', fh.read())
        with open(init, "w") as fh:
            fh.write(text)
        if edit is not None:
            edit(tree)
        sums = []
        for directory, _, files in os.walk(tree):
            for name in sorted(files):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, tree)
                if not relative.startswith("DEBIAN/") and not os.path.islink(path):
                    with open(path, "rb") as fh:
                        sums.append(f"{hashlib.md5(fh.read()).hexdigest()}  {relative}\n")
        with open(os.path.join(tree, "DEBIAN", "md5sums"), "w") as fh:
            fh.writelines(sorted(sums, key=lambda line: line.split("  ", 1)[1]))
        out = os.path.join(into, f"tcpchatd_{version}_all.deb")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, out], check=True,
                       capture_output=True)
    return out


@pytest.fixture(scope="module")
def machine(deb):
    """A machine booted with systemd whose rsyslog runs, where this host's installed copy
    of the package is purged and the built one installed as an operator installs it."""
    booted = Machine().start()
    try:
        # an operator's Debian has no policy-rc.d; a container image's (this host's) says
        # 101 to every start and stop a maintainer script asks for
        booted.run("rm", "-f", "/usr/sbin/policy-rc.d")
        booted.systemctl("start", "rsyslog.service")
        booted.run("apt-get", "purge", "-y", "tcpchatd")
        booted.packages = booted.path("/var/tmp/tcpchatd-packages")
        os.mkdir(booted.packages)
        shutil.copy(deb, booted.packages)
        booted.deb = os.path.join(booted.packages, os.path.basename(deb))
        booted.rsyslog_before = booted.show("rsyslog.service", "MainPID")
        booted.install = install(booted, os.path.basename(deb))
        yield booted
    finally:
        booted.stop()


def install(machine: Machine, name: str):
    return machine.run("apt-get", "install", "-y", f"/var/tmp/tcpchatd-packages/{name}")


def machine_ctl(machine: Machine, *args: str):
    return machine.run("tcpchatctl", *args, check=False)


def connect(machine: Machine):
    """connect(port, timeout=) for clients inside the machine's network."""
    return lambda port, timeout=10: machine.in_network(lambda: RawClient(port, timeout=timeout))


def traffic(machine: Machine) -> str:
    try:
        with open(machine.path(TRAFFIC_LOG), errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def test_on_a_systemd_machine_install_starts_the_sockets_and_rsyslog_files_the_traffic(
        machine):
    for unit in ("tcpchatd.socket", "tcpchatd-admin.socket"):
        assert machine.systemctl("is-enabled", unit).stdout.strip() == "enabled"
        assert machine.systemctl("is-active", unit).stdout.strip() == "active"
    assert machine.systemctl("is-enabled", "tcpchatd-tls.socket",
                             check=False).stdout.strip() == "disabled"
    assert machine.show("tcpchatd.service", "ActiveState") == "inactive"  # until a client
    # postinst restarted rsyslog: it read the package's rule
    assert machine.show("rsyslog.service", "MainPID") != machine.rsyslog_before
    client = connect(machine)(MACHINE_PORT, timeout=15)  # socket activation
    assert client.join("operator")["nickname"] == "operator"
    assert machine.show("tcpchatd.service", "ActiveState") == "active"
    # the unit as shipped, every hardening setting applied (no drop-in resets any here)
    assert machine.show("tcpchatd.service", "DropInPaths") == ""
    for setting, value in (("ProtectProc", "invisible"), ("ProcSubset", "pid"),
                           ("ProtectKernelTunables", "yes"), ("ProtectControlGroups", "yes")):
        assert machine.show("tcpchatd.service", setting) == value, setting
    who = machine_ctl(machine, "who", "--json")
    assert who.returncode == 0, who.stderr
    assert [c["nickname"] for c in json.loads(who.stdout)["clients"]] == ["operator"]
    wait_for(lambda: re.search(r"tcpchatd\[\d+\]: join nick=operator ", traffic(machine)),
             timeout=10)
    client.close()


def test_a_package_upgrade_keeps_every_client_connected(machine):
    machine.systemctl("start", "tcpchatd.service")
    pid = machine.show("tcpchatd.service", "MainPID")
    newer = repacked(machine.deb, machine.packages, "0.1.0+lab1")
    outcome = {}

    def upgrade():
        outcome["apt"] = install(machine, os.path.basename(newer))
    # within the default flood limit (20 a second), long enough to span apt's run
    chat_through(MACHINE_PORT, upgrade, connect=connect(machine), interval=0.06)
    said = outcome["apt"].stdout
    assert re.search(r"tcpchatd: upgraded to tcpchatd 0\.1\.0\+lab1 \(pid \d+\); "
                     r"6 clients carried, pause \d+ ms", said), said
    assert "restarting" not in said
    assert machine.show("tcpchatd.service", "MainPID") == pid
    assert machine.show("tcpchatd.service", "NRestarts") == "0"
    stats = json.loads(machine_ctl(machine, "stats", "--json").stdout)
    assert (stats["version"], stats["upgrades"]) == ("0.1.0+lab1", 1)
    assert re.search(r"upgrade ok=yes version=0\.1\.0\+lab1 previous=0\.1\.0 clients=6 ",
                     traffic(machine))


def test_a_refused_upgrade_restarts_the_daemon_and_says_so(machine):
    machine.systemctl("start", "tcpchatd.service")
    pid = machine.show("tcpchatd.service", "MainPID")
    client = connect(machine)(MACHINE_PORT)
    client.join("stays")

    def unreadable_state(tree):  # new code that cannot read the state the old one writes
        path = os.path.join(tree, PACKAGE_DIR.lstrip("/"), "net", "handover.py")
        with open(path) as fh:
            text = fh.read().replace("ACCEPTED_FORMATS = frozenset({1})",
                                     "ACCEPTED_FORMATS = frozenset({99})")
        with open(path, "w") as fh:
            fh.write(text)
    newer = repacked(machine.deb, machine.packages, "0.1.0+lab2", unreadable_state)
    said = install(machine, os.path.basename(newer)).stdout
    assert re.search(r"tcpchatd: the hitless upgrade was refused \(.*state formats \[99\], "
                     r"not 1.*\); restarting the daemon instead", said), said
    assert client.closed(timeout=10)  # the restart ended its connection
    assert machine.show("tcpchatd.service", "MainPID") != pid
    assert machine.show("tcpchatd.service", "ActiveState") == "active"
    stats = json.loads(machine_ctl(machine, "stats", "--json").stdout)
    assert stats["version"] == "0.1.0+lab2"
    assert re.search(r"upgrade ok=no error=.*state formats", traffic(machine))
    again = connect(machine)(MACHINE_PORT)  # and serves again
    assert again.join("back")["nickname"] == "back"
    again.close()


def test_on_a_systemd_machine_removal_stops_the_units_and_purge_leaves_the_user(machine):
    machine.systemctl("start", "tcpchatd.service")
    machine.run("apt-get", "remove", "-y", "tcpchatd")
    for unit in ("tcpchatd.service", "tcpchatd.socket", "tcpchatd-admin.socket"):
        assert machine.show(unit, "ActiveState") == "inactive", unit
    assert os.path.exists(machine.path("/etc/tcpchatd/tcpchatd.toml"))  # conffiles stay
    machine.run("apt-get", "purge", "-y", "tcpchatd")
    for gone in ("/etc/tcpchatd", "/var/lib/tcpchatd", TRAFFIC_LOG,
                 "/etc/rsyslog.d/30-tcpchatd.conf", "/lib/systemd/system/tcpchatd.service"):
        assert not os.path.exists(machine.path(gone)), gone
    assert machine.run("getent", "passwd", "tcpchatd").returncode == 0
