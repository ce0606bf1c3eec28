"""Fixtures for the eBPF tests. Root tests make throwaway network namespaces (tpe-*), a child
cgroup under the cgroup2 mount and a bpffs on a fresh temp dir, and remove them all after."""
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from sandbox.netns import as_uid, base_python

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_tools.py")
PROXY_UID = 5678
CLONE_NEWNET = 0x40000000

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, cgroup, bpf)")


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def in_netns(name):
    """Switch this thread's network namespace (pyroute2 and tc follow it), then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


class Lab:
    """Two namespaces on a veth pair, a child cgroup, a bpffs, and the processes we start."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.app, self.srv = f"tpe-app-{tag}", f"tpe-srv-{tag}"
        self.iface = "tpa0"
        from ebpf.cgroup import cgroup2_mount
        self.cg = os.path.join(cgroup2_mount(), f"tpctl-test-{tag}")
        self.tmp = tempfile.mkdtemp(prefix="tpe-")
        self.bpffs = os.path.join(self.tmp, "bpffs")
        self.procs = []

    def setup(self):
        sh("ip", "netns", "add", self.app)
        sh("ip", "netns", "add", self.srv)
        sh("ip", "-n", self.app, "link", "add", self.iface, "type", "veth", "peer", "name", "tps0",
           "netns", self.srv)
        for ns, dev, v4, v6 in ((self.app, self.iface, "198.18.0.1/24", "2001:2::1/64"),
                                (self.srv, "tps0", "198.18.0.2/24", "2001:2::2/64")):
            sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.app, "addr", "add", "::6/128", "dev", "lo")
        os.mkdir(self.cg)
        os.mkdir(self.bpffs)
        os.chmod(self.tmp, 0o777)  # the sidecar (uid 5678) writes its log and ready file here
        # ...and runs from a copy here: the checkout may be one that uid 5678 cannot enter
        self.tools = os.path.join(self.tmp, os.path.basename(TOOLS))
        shutil.copyfile(TOOLS, self.tools)
        os.chmod(self.tools, 0o644)

    def run(self, ns, *args, uid=None, cgroup=True, background=False, timeout=20):
        prefix = f"echo $$ > {self.cg}/cgroup.procs; " if cgroup else ""
        cmd = ["nsenter", f"--net=/run/netns/{ns}"]
        if uid is not None:
            cmd += as_uid(uid)
        cmd += [base_python(), "-I", self.tools, *map(str, args)]
        full = ["sh", "-c", prefix + 'exec "$@"', "sh", *cmd]
        if background:
            proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.procs.append(proc)
            return proc
        out = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start(self, ns, *args, **kw):
        ready = os.path.join(self.tmp, f"ready-{len(self.procs)}")
        proc = self.run(ns, args[0], *args[1:2], ready, *args[2:], background=True, **kw)
        for _ in range(100):
            if os.path.exists(ready):
                return proc
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            time.sleep(0.05)
        raise RuntimeError(f"{args} did not get ready")

    def teardown(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # by pid: only what we started
            proc.wait(timeout=5)
        for ns in (self.app, self.srv):
            sh("ip", "netns", "del", ns, check=False)
        from ebpf.pins import is_bpffs, umount
        if is_bpffs(self.bpffs):
            umount(self.bpffs)
        for _ in range(50):
            try:
                if os.path.isdir(self.cg):
                    os.rmdir(self.cg)
                break
            except OSError:
                time.sleep(0.1)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def lab():
    lab = Lab()
    try:
        lab.setup()
        yield lab
    finally:
        lab.teardown()
