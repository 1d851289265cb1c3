"""The Debian package as an operator gets it (issue 17): `.ci/run` builds it from the tree
(dpkg-buildpackage), runs lintian, installs it with `apt-get install ./tcpchatd_*.deb`,
runs this suite, then purges it and checks what is left."""

import grp
import json
import os
import pwd
import re
import socket
import subprocess

import pytest

from rawclient import RawClient
from systemd_lab import UserManager
from test_systemd_real import LAB_RESETS

SBIN = "/usr/sbin/tcpchatd"
UNIT_DIR = "/lib/systemd/system"
UNITS = ("tcpchatd.service", "tcpchatd.socket", "tcpchatd-admin.socket", "tcpchatd-tls.socket")
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
    assert {"rsyslog", "logrotate"} <= set(re.split(r",\s*", dpkg_query("Recommends")))


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
    with open("/usr/lib/sysusers.d/tcpchatd.conf") as fh:
        assert "tcpchatd-admin" in fh.read()
    enabled = os.listdir("/etc/systemd/system/sockets.target.wants")
    assert {"tcpchatd.socket", "tcpchatd-admin.socket"} <= set(enabled)
    assert "tcpchatd-tls.socket" not in enabled  # TLS waits for the operator's certificate


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
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        drop_ins = {"tcpchatd.service": "[Service]\nWatchdogSec=2\n" + LAB_RESETS,
                    "tcpchatd.socket": f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
                    "tcpchatd-admin.socket": f"[Socket]\nListenStream=\nListenStream={admin_path}\n"}
        for unit, text in drop_ins.items():
            os.makedirs(os.path.join(manager.unit_dir, f"{unit}.d"))
            with open(os.path.join(manager.unit_dir, f"{unit}.d", "lab.conf"), "w") as fh:
                fh.write(text)
        for unit in UNITS:
            manager.systemctl("link", os.path.join(UNIT_DIR, unit))
        manager.systemctl("daemon-reload")
        manager.port, manager.admin_path = port, admin_path
        yield manager
    finally:
        manager.stop()


def installed_ctl(lab, *args):
    return subprocess.run(["/usr/bin/tcpchatctl", "--admin-socket", lab.admin_path, *args],
                          capture_output=True, text=True, timeout=30, cwd="/",
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_the_installed_units_serve_under_systemd(lab):
    lab.systemctl("start", "tcpchatd.socket", "tcpchatd-admin.socket")
    try:
        client = RawClient(lab.port, timeout=15)  # socket activation starts the service
        assert client.join("operator")["nickname"] == "operator"
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
