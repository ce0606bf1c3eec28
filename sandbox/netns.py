"""A throwaway sandbox: two network namespaces joined by a veth, a child cgroup, a temp dir.

The demo, the netns and eBPF tests and the benchmarks all build their hosts with this, so the rule
"never touch the host's own namespace, root cgroup or /sys/fs/bpf" lives in one place:
- hosts get addresses from 198.18.0.0/15 and 2001:2::/48 (the benchmarking ranges, RFC 2544
  and RFC 5180), so no packet can be meant for a real network;
- every process is started by pid, in its own session, and killed by that pid on close();
- close() runs even on failure or Ctrl-C (use the sandbox as a context manager).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from engine.probe import mounts_of_type
from engine.timeouts import bound

APP_V4, SRV_V4 = "198.18.0.1", "198.18.0.2"
APP_V6, SRV_V6 = "2001:2::1", "2001:2::2"
PROXY_UID = 5678
CLONE_NEWNET = 0x40000000
# Every time limit here goes through engine.timeouts.bound (TPCTL_TIMEOUT_SCALE on slow hosts).


class SandboxError(RuntimeError):
    pass


_RUNS_AS: set[tuple[int, str]] = set()


def as_uid(uid: int) -> list[str]:
    """The argv prefix that runs a command as `uid` (and its group), with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def base_python() -> str:
    """The interpreter itself, not the venv's link to it: a venv inside a checkout under /root
    (0700 on Debian) cannot be entered by the sidecar's uid, /usr/bin/python3.X can."""
    return os.path.realpath(sys.executable)


# The sandbox's modules that run inside its namespaces, some as the proxy uid: copied into the
# sandbox's own directory (readable by every user) and run from there with the stdlib only, so
# a checkout or venv that only root may enter still runs the demo and the tests.
RUNNABLE = ("sidecar.py", "peers.py")
# python -I -c RUN <dir> <module> args...: the module from the sandbox's copy, as `python -m`
_RUN = "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"


def check_runs_as(uid: int, python: str | None = None) -> None:
    """Fail at once, naming the fix, when `uid` cannot start `python` (the sandbox's modules come
    from its own copy). A pyenv interpreter under /root would otherwise show only as a sidecar
    port that never opens, a minute later."""
    python = python or base_python()
    if (uid, python) in _RUNS_AS:  # once per process: every scene would pay a Python start-up
        return
    result = subprocess.run([*as_uid(uid), python, "-I", "-c", "import json, socket, threading"],
                            capture_output=True, text=True, timeout=bound(60))
    if result.returncode == 0:
        _RUNS_AS.add((uid, python))
        return
    said = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    paths = (python, os.path.realpath(python))
    closed = next((d for d in (_closed_dir(p) for p in paths) if d), None)
    fix = (f"chmod o+x {closed}, or use a Python installed where every user may enter, such as /usr/bin/python3"
           if closed else "make that interpreter executable by every user")
    raise SandboxError(f"uid {uid} (the sidecar's user) cannot run {python}: {said} (fix: {fix})")


def _closed_dir(path: str) -> str | None:
    """The first directory on the way to `path` that other users may not enter."""
    parts = os.path.abspath(path).split(os.sep)[1:-1]
    for depth in range(1, len(parts) + 1):
        directory = os.sep + os.path.join(*parts[:depth])
        if not os.stat(directory).st_mode & 0o001:
            return directory
    return None


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run this thread in the network namespace `ns` (netlink, tc and the eBPF engine's calls
    made in-process follow it), then back in the one it was in."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=bound(30))
    if result.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Sandbox:
    def __init__(self, prefix: str = "tpctl", ipv6: bool = True):
        self.id = secrets.token_hex(3)
        self.app = f"{prefix}-{self.id}-app"
        self.srv = f"{prefix}-{self.id}-srv"
        self.app_if, self.srv_if = f"tp{self.id}a", f"tp{self.id}s"
        self.ipv6 = ipv6
        self.tmp = tempfile.mkdtemp(prefix=f"{prefix}-sandbox-")
        self.pyroot = os.path.join(self.tmp, "py")  # RUNNABLE, as package sandbox
        self.state_dir = os.path.join(self.tmp, "state")
        self.persist_root = os.path.join(self.tmp, "root")  # /etc/tpctl and /etc/systemd/system under it
        self.resolv_conf = os.path.join(self.tmp, "resolv.conf")
        self.cgroup: str | None = None
        self.bpffs: str | None = None
        self._procs: list[subprocess.Popen] = []
        self._namespaces: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create(self) -> None:
        self._copy_runnable()
        for ns in (self.app, self.srv):
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", self.app_if, "netns", self.app, "type", "veth", "peer", "name", self.srv_if,
            "netns", self.srv)
        for ns, iface, v4, v6 in ((self.app, self.app_if, APP_V4, APP_V6), (self.srv, self.srv_if, SRV_V4, SRV_V6)):
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", iface)
            if self.ipv6:
                _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", iface, "nodad")
            _ip("-n", ns, "link", "set", iface, "up")
        with open(self.resolv_conf, "w", encoding="utf-8") as handle:
            handle.write(f"nameserver {SRV_V4}\n")
        cgroup2 = next(iter(mounts_of_type("cgroup2")), None)
        if cgroup2:
            self.cgroup = os.path.join(cgroup2, f"tpctl-sandbox-{self.id}")
            os.mkdir(self.cgroup)

    def _copy_runnable(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        package = os.path.join(self.pyroot, "sandbox")
        os.makedirs(package)
        for directory in (self.pyroot, package):
            os.chmod(directory, 0o755)
        open(os.path.join(package, "__init__.py"), "w").close()
        for name in RUNNABLE:
            shutil.copyfile(os.path.join(here, name), os.path.join(package, name))
        for root, _dirs, files in os.walk(self.pyroot):
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        os.chmod(self.tmp, 0o711)  # others may reach py/, not list the sandbox

    def add_address(self, ns: str, cidr: str, dev: str = "lo") -> None:
        """One more address in `ns`, gone with the namespace (e.g. ::6 on lo, the inbound
        passthrough source that tpctl install adds where the tests drive an engine directly)."""
        _ip("-n", ns, "addr", "add", cidr, "dev", dev)

    def bpffs_dir(self) -> str:
        """The directory of this sandbox's bpffs (never /sys/fs/bpf), for code that mounts it
        itself; close() unmounts whatever is still mounted there."""
        if self.bpffs is None:
            path = os.path.join(self.tmp, "bpffs")
            os.mkdir(path)
            self.bpffs = path
        return self.bpffs

    def mount_bpffs(self) -> str:
        """A private bpffs for this sandbox (never /sys/fs/bpf)."""
        path = self.bpffs_dir()
        if path not in mounts_of_type("bpf"):
            subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, timeout=bound(30))
        return path

    def close(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        for ns in self._namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=bound(30))
        self._namespaces.clear()
        if self.bpffs:
            subprocess.run(["umount", self.bpffs], capture_output=True, timeout=bound(30))
            self.bpffs = None
        if self.cgroup and os.path.isdir(self.cgroup):
            for _ in range(50):  # a killed process leaves its cgroup a moment after it dies
                try:
                    os.rmdir(self.cgroup)
                    break
                except OSError:
                    time.sleep(0.05)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- processes ---------------------------------------------------------------------------
    def command(self, ns: str, argv: list[str], uid: int | None = None) -> list[str]:
        """argv run inside `ns` (network namespace only: /sys and the cgroup2 mount stay visible),
        as `uid` when given. Processes of the app namespace also join the sandbox's cgroup,
        where the eBPF engine attaches: the server host stays outside, as a remote host would."""
        inner = ["nsenter", f"--net=/run/netns/{ns}", "--"]
        if uid is not None:
            inner += as_uid(uid)
        inner += argv
        if not self.cgroup or ns != self.app:
            return inner
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["sh", "-c", join, self.cgroup, *inner]

    def run(self, ns: str, argv: list[str], uid: int | None = None, timeout: float = 60,
            check: bool = False, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(ns, argv, uid), capture_output=True, text=True,
                                timeout=bound(timeout), env=env, input=input, cwd=self._cwd_for(uid))
        if check and result.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def spawn(self, ns: str, argv: list[str], uid: int | None = None, log: str | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(self.command(ns, argv, uid), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self._cwd_for(uid))
        if log:
            out.close()
        self._procs.append(proc)
        return proc

    def _cwd_for(self, uid: int | None) -> str | None:
        """Another uid starts in the sandbox's directory, which it may enter: a checkout in a
        0700 home is not (HAProxy refuses to start when it cannot chdir back to where it began)."""
        return self.tmp if uid is not None else None

    def python(self, module: str, *args: str) -> list[str]:
        """argv running sandbox.<module> from the sandbox's copy (see RUNNABLE)."""
        return [base_python(), "-I", "-c", _RUN, self.pyroot, module, *args]

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """End a process we started, by its pid (its own session: nothing else shares it)."""
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    # -- tpctl itself ------------------------------------------------------------------------
    def tpctl(self, *args: str, env: dict | None = None, timeout: float = 180,
              input: str | None = None) -> subprocess.CompletedProcess:
        """Run tpctl inside the app namespace with this sandbox's state dir."""
        # --persist writes under the sandbox's own root, never the host's /etc (engine/persist.py)
        full_env = {**os.environ, "TPCTL_STATE_DIR": self.state_dir, "TPCTL_PERSIST_ROOT": self.persist_root,
                    **(env or {})}
        return self.run(self.app, [sys.executable, "-m", "engine.cli", *args], env=full_env, timeout=timeout,
                        input=input)

    def wait_for_port(self, ns: str, port: int, proto: str = "tcp", timeout: float = 10) -> None:
        """Wait until something listens on `port` in `ns` (bounded)."""
        flag = "-ltn" if proto == "tcp" else "-lun"
        deadline = time.monotonic() + bound(timeout)
        while time.monotonic() < deadline:
            out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "ss", "-H", flag, f"sport = :{port}"],
                                 capture_output=True, text=True, timeout=bound(10)).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise SandboxError(f"nothing listens on {proto} port {port} in {ns} after {bound(timeout)}s")
