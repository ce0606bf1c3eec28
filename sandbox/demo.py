"""`tpctl demo`: the whole redirect, end to end, in a throwaway sandbox.

Builds the standard scene (sandbox/scenario.py), installs with the best engine this
host can run, sends real traffic, shows what the sidecar saw and what `tpctl status` says,
uninstalls and removes the sandbox. The host is left untouched, also on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import signal
from typing import Callable

from sandbox.netns import APP_V4, APP_V6, PROXY_UID, SRV_V4, SRV_V6, Sandbox, SandboxError
from sandbox.scenario import Scenario

ENGINE_FLAGS = {
    "auto": ["--experimental-transparent-proxy-engine", "--ebpf-enabled"],
    "ebpf": ["--ebpf-enabled", "--no-fallback"],
    "nftables": ["--nftables-enabled", "--no-fallback"],
    "iptables": [],
}


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def run(engine: str, show: Callable[[str], None]) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Sandbox("tpdemo") as sandbox:
            return _demo(sandbox, engine, show)
    except KeyboardInterrupt:
        show("\ninterrupted: the sandbox was removed")
        return 130
    except SandboxError as err:
        show(f"demo: {err}; the sandbox was removed")
        return 2


def _demo(sb: Sandbox, engine: str, show: Callable[[str], None]) -> int:
    show(f"sandbox: namespaces {sb.app} ({APP_V4}, {APP_V6}) and {sb.srv} ({SRV_V4}, {SRV_V6}), "
         f"cgroup {sb.cgroup}")
    scene = Scenario(sb).start()
    show(f"sidecar: running as uid {PROXY_UID} on 15001 (outbound), 15006 (inbound), 15053 (DNS)")
    args = ["install", "--kuma-dp-user", str(PROXY_UID), "--redirect-dns", "--resolv-conf", sb.resolv_conf,
            *ENGINE_FLAGS[engine]]
    if "--ebpf-enabled" in args:
        args += ["--ebpf-cgroup-path", sb.cgroup or "auto", "--ebpf-bpffs-path", sb.mount_bpffs(),
                 "--ebpf-tc-attach-iface", sb.app_if, "--ebpf-instance-ip", APP_V4]
    show("\n$ tpctl " + " ".join(args))
    result = sb.tpctl(*args)
    show((result.stderr + result.stdout).rstrip())
    if result.returncode != 0:
        show(f"install failed with exit code {result.returncode}")
        return result.returncode
    try:
        show("\ntraffic:")
        for label, reply in (
            (f"app -> {SRV_V4}:9000 (outbound)", scene.outbound(SRV_V4, 9000)),
            (f"app -> [{SRV_V6}]:9000 (outbound, IPv6)", scene.outbound(SRV_V6, 9000)),
            (f"proxy uid -> {SRV_V4}:9000 (never redirected)", scene.outbound(SRV_V4, 9000, uid=PROXY_UID)),
            (f"{SRV_V4} -> app {APP_V4}:8080 (inbound)", scene.inbound(APP_V4, 8080)),
            (f"app DNS query to {SRV_V4}:53", scene.dns(SRV_V4)),
        ):
            show(f"  {label}: {reply}")
        show("\nwhat the sidecar saw (original destinations from SO_ORIGINAL_DST):")
        for record in scene.seen():
            if "listener" in record:
                show(f"  {record}")
        status = sb.tpctl("status")
        show("\n$ tpctl status\n" + (status.stdout + status.stderr).rstrip())
    finally:
        removed = sb.tpctl("uninstall")
        show("\n$ tpctl uninstall\n" + (removed.stderr + removed.stdout).rstrip())
    left = sb.tpctl("status")
    show(f"after uninstall: {left.stdout.strip()} (exit {left.returncode})")
    show("removing the sandbox")
    return 0 if removed.returncode == 0 and left.returncode == 0 else 1
