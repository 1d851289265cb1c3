"""Real systemd for tests: a user manager in its own mount and cgroup namespaces
(UserManager), and a machine booted with systemd as PID 1 (Machine, below).

Written from ../shared/SYSTEMD_LAB.md. The hazards it guards against:
- the manager must see only a fresh cgroup2 sub-tree (never the host's root cgroup,
  or it moves every process of the machine into its init.scope): the launcher moves
  itself into a new sub-tree, then unshares mount and cgroup namespaces and mounts only
  cgroup2 at /sys/fs/cgroup inside;
- /run/systemd/system is created only on a private tmpfs inside the namespace;
- teardown ends only what this harness started (the manager by pid, then whatever is
  left in its own sub-tree) and removes the sub-tree, deepest first.
The machine adds its own PID, network, UTS and IPC namespaces, an overlay root (the host's
files are only read) and a read-only /proc/sys: a system manager would otherwise apply the
sysctl.d files to this host's kernel (systemd-sysctl) and bump its fs.file-max.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import threading
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


def reap(proc: subprocess.Popen) -> None:
    """Wait for a process told to end; killed if it does not within 15 s."""
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def remove_cgroup(path: str) -> None:
    """Whatever is left in our cgroup sub-tree killed, the sub-tree removed, deepest first."""
    if not os.path.isdir(path):
        return
    kill_file = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill_file):
        with open(kill_file, "w") as fh:
            fh.write("1")
    deadline = time.monotonic() + 10
    for directory, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        while True:
            try:
                os.rmdir(directory)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)


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
            reap(self.proc)
        remove_cgroup(self.cgroup)
        shutil.rmtree(self.base, ignore_errors=True)


# systemd as PID 1 of a machine of its own: namespaces for everything (PID, mount,
# cgroup, network, UTS, IPC) and the host's root as the lower layer of an overlay whose
# writes land in a tmpfs, so the host's files (its dpkg database too) stay as they were.
# The kernel's settings stay the host's: /proc/sys is read-only inside (as systemd-nspawn
# mounts it), and the units that would write them or load modules are masked.
MACHINE_INSIDE = r"""
set -e
base=$1
mount -t tmpfs -o mode=755 tmpfs "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
root=$base/root
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
if [ -e "$root/proc/sysrq-trigger" ]; then
    mount --bind "$root/proc/sysrq-trigger" "$root/proc/sysrq-trigger"
    mount -o remount,bind,ro "$root/proc/sysrq-trigger"
fi
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 -o nsdelegate cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
: > "$root/etc/fstab"
for unit in systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service \
            proc-sys-fs-binfmt_misc.automount; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
printf '[Unit]\nDescription=tcpchatd test machine\nRequires=sysinit.target sockets.target\nAfter=sysinit.target sockets.target\n' \
    > "$root/etc/systemd/system/tcpchatd-lab.target"
mkdir "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
# shared inside the machine, as systemd-nspawn leaves a container's root (systemd makes it
# so itself only when not in a container): a service's credentials, mounted by a helper
# in a namespace of its own, must propagate back. The host's mounts are not peers of
# these (unshare made the copies private), so nothing reaches the host.
mount --make-rshared /
exec env -i container=tcpchatd-lab PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    "$0" --unit=tcpchatd-lab.target
"""
MACHINE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Machine:
    """A booted systemd (PID 1 of its own namespaces, see MACHINE_INSIDE) for what only
    such a machine does: a package's maintainer scripts act on units only where
    /run/systemd/system exists, which must never be made on this host."""

    def __init__(self) -> None:
        self.name = f"tcpchatd-machine-{uuid.uuid4().hex[:8]}"
        self.base = f"/run/{self.name}"
        self.log_path = f"{self.base}.log"
        self.cgroup = os.path.join(cgroup2_parent(), self.name)
        self.proc: subprocess.Popen | None = None
        self.pid = 0  # the machine's PID 1, as this host numbers it

    def start(self) -> "Machine":
        os.makedirs(self.base, mode=0o755)
        os.mkdir(self.cgroup)
        launcher = (f'echo $$ > {self.cgroup}/cgroup.procs && exec unshare --mount --cgroup '
                    f'--pid --fork --net --uts --ipc --propagation private '
                    f'bash -c "$1" {SYSTEMD} {self.base}')
        self.proc = subprocess.Popen(["bash", "-c", launcher, "launcher", MACHINE_INSIDE],
                                     start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"))
        deadline = time.monotonic() + 60
        try:
            while not self.pid:
                self.pid = self._pid_one()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the machine did not start: " + self._log())
                time.sleep(0.05)
            while True:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the machine did not boot ({state}): {self._log()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _pid_one(self) -> int:
        """The unshare process's one child, once it has become systemd."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                children = fh.read().split()
            with open(f"/proc/{children[0]}/cmdline", "rb") as fh:
                return int(children[0]) if fh.read().startswith(SYSTEMD.encode()) else 0
        except (OSError, IndexError):
            return 0

    def _log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()[-2000:]

    def run(self, *argv: str, check: bool = True, timeout: float = 180,
            env: dict | None = None):
        """A command inside (all its namespaces, its root), with a clean environment."""
        inside_env = {"PATH": MACHINE_PATH, "LANG": "C.UTF-8", "HOME": "/root",
                      "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        command = ["nsenter", "--target", str(self.pid), "--all", "env", "-i",
                   *[f"{key}={value}" for key, value in inside_env.items()], *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                cwd="/")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): "
                                 f"{result.stderr}{result.stdout}")
        return result

    def systemctl(self, *args: str, check: bool = True):
        return self.run("systemctl", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def path(self, inside: str) -> str:
        """The host's path to a file inside (read or written through the overlay)."""
        return f"/proc/{self.pid}/root{inside}"

    def in_network(self, make):
        """make() called in the machine's network namespace, by a thread of its own
        (setns moves only the calling thread); a socket it opens stays there."""
        outcome: dict = {}

        def enter() -> None:
            fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
            try:
                if _libc().setns(fd, 0) != 0:
                    outcome["error"] = OSError(ctypes.get_errno(), "setns failed")
                    return
            finally:
                os.close(fd)
            try:
                outcome["value"] = make()
            except BaseException as exc:  # raised again in the caller's thread
                outcome["error"] = exc
        thread = threading.Thread(target=enter)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def stop(self) -> None:
        """End the machine by its PID 1 (the kernel ends everything in its PID namespace
        with it), then anything left in our sub-tree; remove the sub-tree."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            reap(self.proc)
        remove_cgroup(self.cgroup)
        shutil.rmtree(self.base, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)
