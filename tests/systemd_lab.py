"""A real systemd user manager for tests, in its own mount and cgroup namespaces.

Written from ../shared/SYSTEMD_LAB.md. The hazards it guards against:
- the manager must see only a fresh cgroup2 sub-tree (never the host's root cgroup,
  or it moves every process of the machine into its init.scope): the launcher moves
  itself into a new sub-tree, then unshares mount and cgroup namespaces and mounts only
  cgroup2 at /sys/fs/cgroup inside;
- /run/systemd/system is created only on a private tmpfs inside the namespace;
- teardown ends only what this harness started (the manager by pid, then whatever is
  left in its own sub-tree) and removes the sub-tree, deepest first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

SYSTEMD = "/lib/systemd/systemd"

INSIDE = r"""
set -e
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=755 tmpfs /run/systemd
mkdir -p /run/systemd/system /run/systemd/inaccessible/dir
touch /run/systemd/inaccessible/reg
mkfifo /run/systemd/inaccessible/fifo
mknod /run/systemd/inaccessible/chr c 0 0
mknod /run/systemd/inaccessible/blk b 0 0
chmod 000 /run/systemd/inaccessible/*
exec "$0" --user
"""


def cgroup2_parent() -> str:
    """Where a fresh cgroup2 sub-tree goes: the unified mount on a hybrid host."""
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs"):
        return "/sys/fs/cgroup/unified"
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "/sys/fs/cgroup"
    raise RuntimeError("no cgroup2 hierarchy on this machine")


class UserManager:
    """`systemd --user` (as root) with XDG folders outside /tmp, /root, /home, /run/user."""

    def __init__(self, default_timeout_stop: str = "5s") -> None:
        self.name = f"tcpchatd-test-{uuid.uuid4().hex[:8]}"
        self.base = f"/run/{self.name}"
        self.runtime = os.path.join(self.base, "runtime")
        self.config_home = os.path.join(self.base, "config")
        self.unit_dir = os.path.join(self.config_home, "systemd", "user")
        self.cgroup = os.path.join(cgroup2_parent(), self.name)
        self.proc: subprocess.Popen | None = None
        self.default_timeout_stop = default_timeout_stop

    @property
    def env(self) -> dict:
        return dict(os.environ, XDG_RUNTIME_DIR=self.runtime, XDG_CONFIG_HOME=self.config_home)

    def start(self) -> "UserManager":
        for path in (self.runtime, self.unit_dir):
            os.makedirs(path, mode=0o755)
        os.chmod(self.base, 0o755)
        os.chmod(self.runtime, 0o755)
        # manager defaults (not unit settings): a stuck service is killed within seconds
        with open(os.path.join(self.config_home, "systemd", "user.conf"), "w") as fh:
            fh.write(f"[Manager]\nDefaultTimeoutStopSec={self.default_timeout_stop}\n"
                     f"DefaultTimeoutAbortSec={self.default_timeout_stop}\n")
        os.mkdir(self.cgroup)
        launcher = (f'echo $$ > {self.cgroup}/cgroup.procs && exec unshare --mount --cgroup '
                    f'--propagation private bash -c "$1" {SYSTEMD}')
        self.proc = subprocess.Popen(["bash", "-c", launcher, "launcher", INSIDE],
                                     env=self.env, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.base, "manager.log"), "wb"))
        deadline = time.monotonic() + 20
        while self.systemctl("is-active", "default.target", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = open(os.path.join(self.base, "manager.log")).read()
                self.stop()
                raise RuntimeError(f"systemd --user did not come up: {log}")
            time.sleep(0.05)
        # a service with User= must be able to send sd_notify messages to the manager
        os.chmod(os.path.join(self.runtime, "systemd", "notify"), 0o666)
        return self

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60):
        result = subprocess.run(["systemctl", "--user", *args], env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)} failed "
                                 f"({result.returncode}): {result.stderr}{result.stdout}")
        return result

    def run(self, *argv: str, check: bool = True, timeout: float = 60):
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} failed: {result.stderr}{result.stdout}")
        return result

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID") or 0)

    def stop(self) -> None:
        """End the manager by pid, then anything left in our sub-tree; remove it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a user manager exits on SIGTERM
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if os.path.isdir(self.cgroup):
            kill_file = os.path.join(self.cgroup, "cgroup.kill")
            if os.path.exists(kill_file):
                with open(kill_file, "w") as fh:
                    fh.write("1")
            deadline = time.monotonic() + 10
            for directory, _, _ in sorted(os.walk(self.cgroup), key=lambda w: -w[0].count("/")):
                while True:
                    try:
                        os.rmdir(directory)
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
