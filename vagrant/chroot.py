"""Run one command chrooted in a userland root so that nothing of it outlives it on the host.

Each command runs as `setpriv --pdeathsig KILL unshare --mount --propagation private --pid --fork
--kill-child=SIGTERM [--cgroup] [--net] python chroot.py SPEC`; this file's __main__ is then
process 1 of the new pid namespace. Why each part:

- the mounts the root needs (mount_plan) are made inside that private mount namespace, so they
  vanish with its last process, whatever ends it (exit, timeout, Ctrl-C, SIGTERM, kill -9), and an
  unmount in there can never propagate to the host's /sys or /dev (every mount there is private,
  and the root gets sysfs, cgroup2, proc and tmpfs instances of its own, binding only /dev);
- the pid namespace: when its process 1 dies the kernel kills every other process in it, so no
  daemon a test or a package script started survives; process 1 is this small init (not the
  command itself) because orphans are re-parented to it and must be reaped, or a test waiting for
  a killed daemon to go would wait on a zombie;
- setpriv's parent-death signal kills unshare when the Python process that started it dies, even
  by kill -9, and unshare's --kill-child then sends SIGTERM to process 1, which kills every other
  process of the namespace, removes the cgroups they made and exits: the namespaces end with it;
- net=True (the tests and the engine choice) adds a network namespace of its own with lo and one
  up interface: nothing in the root can reach the host's interfaces, routes or netfilter rules.
  Set-up runs without it: apt and pip need the host's network;
- a cgroup of its own (cgroup=...): process 1 starts in a child of the host's cgroup2 root made
  for the run, with a cgroup namespace rooted there, and the root gets a cgroup2 mount of its own
  where the host has one: the "cgroup2 root" the tests and tpctl see is that child, so nothing in
  the root can attach a program to, or make cgroups in, the host's root cgroup, and whatever a
  killed test left in its cgroups goes when the run's cgroup is removed (remove_cgroup).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

# the environment a command in the root starts with (env -i): nothing of the host's but these
ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "TERM": "dumb", "DEBIAN_FRONTEND": "noninteractive"}
# the host's network settings, passed on as they are when set (a proxy, a PyPI mirror)
FORWARDED = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
             "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")
# CA bundle paths, passed on only when the root has that file: a pip upgraded from PyPI uses its
# own certifi, which knows no CA the host added, unless PIP_CERT names the system bundle
FORWARDED_FILES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")

_running: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()


class Stopped(Exception):
    """stop() was called: no command starts any more."""


def mount_plan(root: str, binds: tuple[tuple[str, str], ...] = (),
               cgroup2: str | None = "/sys/fs/cgroup/unified") -> list[list[str]]:
    """The mounts a root needs, in order, as mount(8) and mkdir commands. `binds` are (host dir,
    path in the root) pairs, e.g. the persistent apt archive; `cgroup2` is where the host mounts
    cgroup2 (a hybrid host: /sys/fs/cgroup/unified): the root gets a cgroup2 mount of its own at
    the same place, made inside the command's cgroup namespace, so it shows the run's cgroup as
    its root, never the host's root cgroup. Pure."""
    def at(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))
    plan = [["mount", "--bind", root, root],  # `ip netns` needs the root to be a mount point
            ["mount", "-t", "proc", "proc", at("/proc")],  # this pid namespace's processes only
            # a sysfs of its own: mounted from the command's network namespace it lists that
            # namespace's interfaces under /sys/class/net (a bind of the host's lists the host's)
            ["mount", "-t", "sysfs", "sysfs", at("/sys")]]
    if cgroup2 == "/sys/fs/cgroup":
        plan.append(["mount", "-t", "cgroup2", "cgroup2", at(cgroup2)])
    elif cgroup2:
        if cgroup2.startswith("/sys/fs/cgroup/"):  # sysfs takes no mkdir: a tmpfs to hold it, as on the host
            plan.append(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", at("/sys/fs/cgroup")])
        plan += [["mkdir", "-p", at(cgroup2)], ["mount", "-t", "cgroup2", "cgroup2", at(cgroup2)]]
    plan += [["mount", "--bind", "/dev", at("/dev")],
            ["mount", "--bind", "/dev/pts", at("/dev/pts")],
            ["mount", "-t", "tmpfs", "tmpfs", at("/dev/shm")],  # the host's /dev/shm stays out
            ["mount", "-t", "tmpfs", "tmpfs", at("/run")],  # netns pins, /run/kuma/bpf, /run/tpctl
            ["mount", "-t", "tmpfs", "tmpfs", at("/tmp")]]
    plan += [["mount", "--bind", source, at(target)] for source, target in binds]
    return plan


def net_plan(dummy: tuple[str, str]) -> list[list[str]]:
    """A fresh network namespace's set-up: lo up, and one up interface with an address (the eBPF
    engine's tc check wants one, as the kernel matrix's guests have). It is a veth, not a dummy:
    the host's kernel may have no dummy driver (this one has none). The peer is made first so the
    addressed end has the lower index, and has no IPv6 so that it never looks like an address-
    carrying interface itself. Pure."""
    name, address = dummy
    peer = name[:14] + "p"
    return [["ip", "link", "set", "lo", "up"], ["ip", "link", "add", peer, "type", "veth", "peer", "name", name],
            ["sysctl", "-qw", f"net.ipv6.conf.{peer}.disable_ipv6=1"],
            ["ip", "addr", "add", address, "dev", name], ["ip", "link", "set", name, "up"],
            ["ip", "link", "set", peer, "up"]]


def root_env(root: str, host_env: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(ROOT_ENV)
    env.update({k: host_env[k] for k in FORWARDED if host_env.get(k)})
    env.update({k: host_env[k] for k in FORWARDED_FILES
                if host_env.get(k) and os.path.isfile(os.path.join(root, host_env[k].lstrip("/")))})
    env.update(extra or {})
    return env


def command(spec_path: str, net: bool, cgroup: str | None = None) -> list[str]:
    """The host-side command line that runs the spec at spec_path (see the module doc): with a
    cgroup, unshare starts in it (moved there by a shell that then becomes unshare), so the new
    cgroup namespace is rooted at it. Pure."""
    enter = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup] if cgroup else []
    return ["setpriv", "--pdeathsig", "KILL", *enter, "unshare", "--mount", "--propagation", "private", "--pid",
            "--fork", "--kill-child=SIGTERM", *(["--cgroup"] if cgroup else []), *(["--net"] if net else []), "--",
            sys.executable, "-I", os.path.abspath(__file__), spec_path]


def isolated(argv: list[str]) -> list[str]:
    """A host command (debootstrap, which mounts /proc and /sys in its target) in a private mount
    and pid namespace: its mounts and processes go with it, also when it is killed. Pure."""
    return ["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--propagation", "private", "--pid", "--fork",
            "--kill-child=SIGKILL", "--", *argv]


def run(argv: list[str], log_path: str, timeout: float, usage: dict | None = None) -> int:
    """Run argv with its output appended to log_path; 124 when killed at `timeout` seconds.
    Every process started here is killed by stop() (Ctrl-C, SIGTERM). `usage` gets the CPU
    seconds of the command and all it started ("cpu_seconds": each process's time reaches its
    parent when it is reaped, and process 1 reaps the orphans), which another load on the host
    does not inflate as it does the wall time."""
    if argv[0] != "setpriv":  # even a plain tar must not outlive a kill -9 of this process
        argv = ["setpriv", "--pdeathsig", "KILL", *argv]
    with open(log_path, "ab") as log:
        with _lock:  # started and registered at once: stop() cannot miss it
            if _stopping.is_set():
                raise Stopped(" ".join(argv))
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            _running.add(process)
        try:
            code, cpu = _wait(process, timeout)
            if usage is not None:
                usage["cpu_seconds"] = round(usage.get("cpu_seconds", 0.0) + cpu, 1)
            if code is None:
                log.write(f"\nvagrant.chroot: killed after {timeout:.0f} s: {' '.join(argv)}\n".encode())
                return 124
            return code
        except BaseException:  # Ctrl-C, SIGTERM: the command goes first (process 1 then ends the rest)
            process.kill()
            process.wait()
            raise
        finally:
            with _lock:
                _running.discard(process)


def _wait(process: subprocess.Popen, timeout: float) -> tuple[int | None, float]:
    """Reap process with wait4 (Popen.wait gives no resource usage); None when it was killed at
    `timeout` seconds. Returns its exit code and CPU seconds (user + system, descendants included)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, rusage.ru_utime + rusage.ru_stime
        if time.monotonic() > deadline:
            process.kill()
            _pid, _status, rusage = os.wait4(process.pid, 0)
            process.returncode = -9
            return None, rusage.ru_utime + rusage.ru_stime
        time.sleep(0.2)


def run_in_root(root: str, argv: list[str], env: dict[str, str], log_path: str, timeout: float, *,
                cwd: str = "/", net: bool = False, binds: tuple[tuple[str, str], ...] = (),
                dummy: tuple[str, str] | None = None, cgroup: str | None = None,
                cgroup2: str | None = None, usage: dict | None = None) -> int:
    """argv (a path in the root, or a name on ROOT_ENV's PATH) chrooted in root, in its own
    namespaces; `cgroup` (made by make_cgroup) holds it, `cgroup2` is the host's cgroup2 mount.
    The spec goes to a file next to the log (kept: it says what ran)."""
    spec = {"root": root, "argv": argv, "env": env, "cwd": cwd,
            "prepare": (net_plan(dummy) if net and dummy else [])
            + mount_plan(root, binds, cgroup2 if cgroup else None),
            "cgroup_mount": os.path.join(root, cgroup2.lstrip("/")) if cgroup and cgroup2 else None}
    spec_path = log_path + ".spec.json"
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle, indent=1)
    return run(command(spec_path, net, cgroup), log_path, timeout, usage)


def make_cgroup(cgroup2: str, name: str) -> str:
    """A fresh child of the host's cgroup2 root for one run (what an earlier, killed run left of
    it removed first)."""
    path = os.path.join(cgroup2, name)
    problems = remove_cgroup(path)
    if problems:
        raise OSError(f"cannot reuse {path}: {problems[0]}")
    os.mkdir(path)
    return path


def remove_cgroup(path: str) -> list[str]:
    """rmdir a run's cgroup and every cgroup a test made in it, deepest first (the kernel refuses
    while a process is in one: that is a process left behind, and said so). Programs still attached
    to them go with them."""
    if not os.path.isdir(path):
        return []
    # process 1 of a run that was just killed may still be ending its processes: give it a moment
    events, deadline = os.path.join(path, "cgroup.events"), time.monotonic() + 30
    while os.path.exists(events) and time.monotonic() < deadline:
        with open(events, encoding="utf-8") as handle:
            if "populated 0" in handle.read():
                break
        time.sleep(0.2)
    problems = []
    for folder, _dirs, _files in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
        try:
            os.rmdir(folder)
        except OSError as err:
            problems.append(f"rmdir {folder}: {err.strerror}")
    return problems


def stop() -> None:
    """SIGKILL every command started here (each one's namespaces, mounts and processes go with it),
    and start no other: Ctrl-C and SIGTERM, while worker threads are between commands."""
    with _lock:
        _stopping.set()
        processes = list(_running)
    for process in processes:
        try:
            process.kill()
        except OSError:
            pass
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def mounts_under(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or under path, as the host sees them (must be none between commands)."""
    path = os.path.realpath(path).rstrip("/")
    with open(mountinfo, encoding="utf-8") as handle:
        points = [line.split()[4].replace("\\040", " ") for line in handle]
    return [p for p in points if p == path or p.startswith(path + "/")]


def processes_under(path: str) -> list[int]:
    """Processes whose root directory is at or under path: a chroot's process left behind."""
    path = os.path.realpath(path).rstrip("/")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if root == path or root.startswith(path + "/"):
            found.append(int(pid))
    return found


# ---- process 1 of the namespaces (runs as `python -I chroot.py SPEC`; standard library only) ----

def _init(spec: dict) -> int:
    for argv in spec["prepare"]:
        subprocess.run(argv, check=True, timeout=120)
    child = os.fork()
    if child == 0:
        try:
            os.chroot(spec["root"])
            os.chdir(spec["cwd"])
            os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as err:
            print(f"vagrant.chroot: {spec['argv'][0]}: {err}", file=sys.stderr, flush=True)
        os._exit(127)
    # SIGTERM is unshare's --kill-child signal: the run is over (timeout, Ctrl-C, or the Python
    # that started it died, even by kill -9): end every process here, then clean up as below
    signal.signal(signal.SIGTERM, lambda _s, _f: _kill_all())
    code = 127
    while True:  # reap every orphan until the command itself ends
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child:  # a command killed by a signal exits 128 + its number, as in a shell
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            break
    _kill_all()  # what the command left running (a daemon a test started) ...
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ... is reaped, so the cgroups it was in are empty
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.1)
        except ChildProcessError:
            break
    if spec.get("cgroup_mount"):  # the cgroups the tests made under the run's own (rmdir refuses others)
        for folder, _dirs, _files in sorted(os.walk(spec["cgroup_mount"]), key=lambda e: -e[0].count("/")):
            if folder != spec["cgroup_mount"]:
                try:
                    os.rmdir(folder)
                except OSError as err:
                    print(f"vagrant.chroot: rmdir {folder}: {err}", file=sys.stderr, flush=True)
    return code


def _kill_all() -> None:
    try:
        os.kill(-1, signal.SIGKILL)  # from process 1: every other process of this pid namespace
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        sys.exit(_init(json.load(handle)))
