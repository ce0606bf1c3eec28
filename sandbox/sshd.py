"""A real OpenSSH sshd in a sandbox namespace, for the SSH lockout guard's tests.

Debian's openssh-server is unpacked by scripts/setup.sh into .cache/openssh-server/, never
installed (the package would start and enable an sshd on the host). sshd insists on its
privilege-separation user and /run/sshd: it runs in a private mount namespace (`unshare -m`,
private propagation) where a copy of /etc/passwd naming that user and a fresh /run are mounted,
so no file of the host changes and every mount ends with the process; OpenSSH 9.8+ is pointed at
its unpacked sshd-session (and 10's sshd-auth).
"""
from __future__ import annotations

import os
import shlex
import subprocess

from engine.timeouts import bound

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "openssh-server")
SSHD = os.path.join(ROOT, "usr", "sbin", "sshd")
PRIVSEP_USER = "sshd:x:64999:65534:privilege separation:/run/sshd:/usr/sbin/nologin\n"


def available() -> bool:
    return os.access(SSHD, os.X_OK)


def start(sandbox, ns: str, port: int) -> subprocess.Popen:
    """sshd -D listening on `port` (all addresses) in `ns`; the sandbox ends it by its pid."""
    key = os.path.join(sandbox.tmp, f"sshd-hostkey-{port}")
    if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True, timeout=bound(30))
    passwd = os.path.join(sandbox.tmp, "sshd-passwd")
    with open("/etc/passwd", encoding="utf-8") as source, open(passwd, "w", encoding="utf-8") as copy:
        copy.write("".join(line for line in source if not line.startswith("sshd:")) + PRIVSEP_USER)
    mounts = [f"mount --bind {shlex.quote(passwd)} /etc/passwd", "mount -t tmpfs tpctl-sshd /run",
              "mkdir -p /run/sshd"]
    options = ["-o", "PidFile=none", "-o", "UsePAM=no"]
    for option, name in (("SshdSessionPath", "sshd-session"), ("SshdAuthPath", "sshd-auth")):  # OpenSSH 9.8+, 10+
        path = os.path.join(ROOT, "usr", "lib", "openssh", name)
        if os.path.exists(path):
            options += ["-o", f"{option}={path}"]
    sshd = " ".join(["exec", shlex.quote(SSHD), "-D", "-e", "-f", "/dev/null", "-h", shlex.quote(key),
                     "-p", str(port), *map(shlex.quote, options)])
    script = " && ".join([*mounts, sshd])
    proc = sandbox.spawn(ns, ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         log=os.path.join(sandbox.tmp, f"sshd-{port}.log"))
    sandbox.wait_for_port(ns, port)
    return proc
