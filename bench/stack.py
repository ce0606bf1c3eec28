"""The measured system inside a sandbox.netns Sandbox.

  srv namespace (198.18.0.2): nginx (one worker) on :80, iperf3 -s on :5201
  app namespace (198.18.0.1): HAProxy as the sidecar, uid 5678, one thread, on :15001
                              (server 0.0.0.0 = SO_ORIGINAL_DST), :15080 and :15201 (explicit);
                              the clients; all inside the sandbox cgroup, where eBPF attaches
Each program is pinned with taskset to its CPU set from configs.cpu_layout. tpctl is run by
its pid with a time limit (procs), so install/uninstall are timed with their rusage.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys

from bench import configs, machine, parse, procs
from sandbox.netns import PROXY_UID, SRV_V4, Sandbox

# Per-namespace sysctls (never the host's): TIME_WAIT reuse for every outgoing connection,
# not only loopback ones (the kernel default 2), so that the client's port range does not run
# out in connection-rate runs whether or not the engine moves the connection onto loopback.
SYSCTLS = {"net.ipv4.tcp_tw_reuse": "1"}
NFT_TABLE = ("inet", "tpctl")  # the nftables engine's one table (family, name)


class StackError(RuntimeError):
    pass


class Stack:
    def __init__(self, sandbox: Sandbox, layout: dict[str, list[int]]):
        self.sb = sandbox
        self.layout = layout
        self.dir = os.path.join(sandbox.tmp, "bench")
        self.stats_socket = os.path.join(self.dir, "haproxy", "stats.sock")
        self.pids: dict[str, int] = {}
        self.softirq_threads: list[int] = []

    # -- start -------------------------------------------------------------------------------
    def start(self) -> Stack:
        sb = self.sb
        os.chmod(sb.tmp, 0o755)  # HAProxy runs as the proxy uid and reads its config from here
        os.makedirs(os.path.join(self.dir, "haproxy"))
        os.makedirs(os.path.join(self.dir, "nginx"))
        os.chown(os.path.join(self.dir, "haproxy"), PROXY_UID, PROXY_UID)
        for ns in (sb.app, sb.srv):
            for key, value in SYSCTLS.items():
                sb.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"], check=True, timeout=10)
        nginx_dir = os.path.join(self.dir, "nginx")
        nginx_conf = self._write("nginx/nginx.conf", configs.nginx_config(nginx_dir, SRV_V4))
        haproxy_conf = self._write("haproxy/haproxy.cfg", configs.haproxy_config(self.stats_socket, SRV_V4))
        server, sidecar = self.layout["server"], self.layout["sidecar"]
        self.pids["nginx"] = sb.spawn(sb.srv, configs.taskset(server, configs.nginx_argv(
            nginx_dir, nginx_conf, machine.nginx_version())),
            log=os.path.join(nginx_dir, "stdout.log")).pid
        self.pids["iperf3-server"] = sb.spawn(sb.srv, configs.taskset(server, [
            "iperf3", "-s", "-B", SRV_V4, "-p", str(configs.IPERF_PORT)]),
            log=os.path.join(self.dir, "iperf3-server.log")).pid
        self.pids["haproxy"] = sb.spawn(sb.app, configs.taskset(sidecar, [
            "haproxy", "-db", "-f", haproxy_conf]), uid=PROXY_UID,
            log=os.path.join(self.dir, "haproxy", "haproxy.log")).pid
        sb.wait_for_port(sb.srv, configs.HTTP_PORT)
        sb.wait_for_port(sb.srv, configs.IPERF_PORT)
        for port in (configs.OUTBOUND_PORT, configs.EXPLICIT_HTTP_PORT, configs.EXPLICIT_IPERF_PORT):
            sb.wait_for_port(sb.app, port)
        self.sessions()  # the stats socket answers
        self.softirq_threads = procs.kernel_threads("ksoftirqd/")
        return self

    def _write(self, relative: str, text: str) -> str:
        path = os.path.join(self.dir, relative)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
        return path

    def alive(self) -> None:
        """Fail loudly when a server or the sidecar has died (a dead sidecar would make every
        later case look like a routing failure)."""
        for name, pid in self.pids.items():
            if not os.path.exists(f"/proc/{pid}"):
                raise StackError(f"{name} (pid {pid}) is no longer running; see {self.dir}")

    # -- observing ---------------------------------------------------------------------------
    def frontends(self) -> dict[str, dict[str, int]]:
        """HAProxy's counters per frontend (stot: sessions, dcon: denied), from its stats socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.stats_socket)
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        frontends = parse.haproxy_frontends(b"".join(chunks).decode())
        missing = set(configs.FRONTENDS) - set(frontends)
        if missing:
            raise StackError(f"HAProxy reports no frontend {sorted(missing)}")
        return frontends

    def sessions(self) -> dict[str, int]:
        return {name: counters["stot"] for name, counters in self.frontends().items()}

    def process_ticks(self) -> dict[str, int]:
        """CPU ticks so far of the server, the sidecar and the kernel's softirq threads (read only)."""
        ticks = {name: procs.process_ticks(pid) for name, pid in self.pids.items()}
        for pid in self.softirq_threads:
            try:
                ticks[f"ksoftirqd {pid}"] = procs.process_ticks(pid)
            except OSError:
                continue
        return ticks

    # -- clients -----------------------------------------------------------------------------
    def client(self, argv: list[str]) -> list[str]:
        """argv as a client: app namespace, sandbox cgroup, not the proxy uid, client CPUs."""
        return self.sb.command(self.sb.app, configs.taskset(self.layout["client"], argv))

    # -- tpctl -------------------------------------------------------------------------------
    def tpctl(self, args: list[str], timeout: float = 300) -> procs.Finished:
        """tpctl in the app namespace with the sandbox's state dir, timed (wall, rusage)."""
        env = {**os.environ, "TPCTL_STATE_DIR": self.sb.state_dir}
        argv = self.sb.command(self.sb.app, [sys.executable, "-m", "engine.cli", *args])
        return procs.run(argv, timeout, env=env)

    def engine_flags(self, engine: str) -> list[str]:
        if engine == "iptables-nft":
            return ["--iptables-backend", "nft"]
        if engine == "iptables-legacy":
            return ["--iptables-backend", "legacy"]
        if engine == "nftables":  # --no-fallback: exit 3 rather than measure iptables under this name
            return ["--nftables-enabled", "--no-fallback"]
        if engine == "ebpf":
            return ["--experimental-transparent-proxy-engine", "--ebpf-enabled", "--no-fallback",
                    "--ebpf-cgroup-path", self.sb.cgroup, "--ebpf-bpffs-path", self.sb.mount_bpffs(),
                    "--ebpf-tc-attach-iface", self.sb.app_if]
        raise ValueError(f"unknown engine {engine!r}")

    def install_args(self, engine: str, *extra: str, traffic: bool = True) -> list[str]:
        """`traffic`: the install the measured cases use (IPv4, inbound redirect off: the bench
        sends outbound IPv4 only); otherwise kumactl's defaults (dualstack, inbound on)."""
        args = ["install", "--kuma-dp-user", str(PROXY_UID), "--resolv-conf", self.sb.resolv_conf,
                "--max-retries", "0", *self.engine_flags(engine)]
        if traffic:
            args += ["--redirect-inbound=false", "--ip-family-mode", "ipv4"]
        return args + list(extra)

    def install(self, engine: str, *extra: str, traffic: bool = True) -> procs.Finished:
        done = self.tpctl(self.install_args(engine, *extra, traffic=traffic))
        if done.returncode != 0:
            raise StackError(f"tpctl install ({engine} {' '.join(extra)}) exited {done.returncode}: "
                             f"{done.stderr.strip()[-2000:]}")
        return done

    def uninstall(self) -> procs.Finished:
        args = ["uninstall"] + (["--ebpf-bpffs-path", self.sb.bpffs] if self.sb.bpffs else [])
        done = self.tpctl(args)
        if done.returncode != 0:
            raise StackError(f"tpctl uninstall exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done

    @contextlib.contextmanager
    def installed(self, engine: str, *extra: str, traffic: bool = True):
        """Install for the duration of a block; yields {"install": Finished} and adds
        "uninstall" after it. On an error the uninstall is attempted and its own error dropped
        (the sandbox's teardown removes what is left), so the first error is the one reported."""
        record = {"install": self.install(engine, *extra, traffic=traffic)}
        try:
            yield record
        except BaseException:
            with contextlib.suppress(Exception):
                self.uninstall()
            raise
        record["uninstall"] = self.uninstall()

    def write_file(self, name: str, text: str) -> str:
        return self._write(name, text)

    def pin_dir(self) -> str:
        """Where the eBPF engine pins its programs and maps in this sandbox's bpffs."""
        return os.path.join(self.sb.bpffs or "", "tpctl")

    def bpf_map_entries(self, map_name: str) -> int:
        """Entries of one of the engine's pinned maps (bpftool reads them from the pin)."""
        pin = os.path.join(self.pin_dir(), f"map_{map_name}")
        done = procs.run(["bpftool", "-j", "map", "dump", "pinned", pin], timeout=60)
        if done.returncode != 0:
            raise StackError(f"bpftool map dump pinned {pin}: {done.stderr.strip()}")
        return parse.bpftool_entry_count(done.stdout)

    def nft_set_elements(self, name: str) -> int:
        """Elements of one of the nftables engine's sets, as the app namespace's kernel holds
        them; 0 for a set that is absent from a table that is there (the engine makes a set only
        when it has elements). No table at all is an error, not 0."""
        family, table = NFT_TABLE
        done = self.sb.run(self.sb.app, ["nft", "-j", "list", "set", family, table, name], timeout=60)
        if done.returncode == 0:
            return parse.nft_set_elements(done.stdout, family, table, name)
        if "No such file or directory" in done.stderr:
            tables = self.sb.run(self.sb.app, ["nft", "-j", "list", "tables"], timeout=60, check=True)
            if NFT_TABLE in parse.nft_tables(tables.stdout):
                return 0
        raise StackError(f"nft list set {family} {table} {name} exited {done.returncode}: {done.stderr.strip()}")

    def iptables_rules(self, engine: str) -> str:
        tool = "iptables-nft-save" if engine == "iptables-nft" else "iptables-legacy-save"
        return self.sb.run(self.sb.app, [tool, "-t", "nat"], timeout=60, check=True).stdout
