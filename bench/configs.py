"""The texts the harness writes: HAProxy and nginx configs, the exclusion config file, and
which CPU each program is pinned to. Pure: no file or process is touched here."""
from __future__ import annotations

import ipaddress
import os

import yaml

HTTP_PORT = 80                # nginx in the server namespace
IPERF_PORT = 5201             # iperf3 -s in the server namespace
OUTBOUND_PORT = 15001         # the sidecar's outbound (redirect target) listener
EXPLICIT_HTTP_PORT = 15080    # the sidecar's own port for the explicit case, fixed server srv:80
EXPLICIT_IPERF_PORT = 15201   # the same for iperf3, fixed server srv:5201
TRAFFIC_PORTS = frozenset({HTTP_PORT, IPERF_PORT, OUTBOUND_PORT, EXPLICIT_HTTP_PORT, EXPLICIT_IPERF_PORT,
                           15006, 15053})
BODY = "x" * 64 + "\n"        # small fixed response body

# HAProxy frontends, as `show stat` names them; measure.py checks their session counters.
FRONTEND_OUTBOUND, FRONTEND_HTTP, FRONTEND_IPERF = "outbound", "explicit_http", "explicit_iperf"
FRONTENDS = (FRONTEND_OUTBOUND, FRONTEND_HTTP, FRONTEND_IPERF)

# Excluded CIDRs come from here: inside the benchmarking range, never covering a sandbox host
# (198.18.0.0/24) or loopback, so the measured traffic is never excluded.
EXCLUDED_CIDR_POOL = ipaddress.ip_network("198.19.0.0/16")
EXCLUDED_CIDR_PREFIX = 30
EXCLUDED_PORT_START = 20000


def haproxy_config(stats_socket: str, server_v4: str) -> str:
    """One thread; `server original 0.0.0.0` sends each connection to its SO_ORIGINAL_DST."""
    return f"""global
  nbthread 1
  maxconn 8000
  stats socket {stats_socket} mode 600 level admin
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen {FRONTEND_OUTBOUND}
  bind 0.0.0.0:{OUTBOUND_PORT}
  # HAProxy takes the original destination from SO_ORIGINAL_DST, and falls back to the local
  # address when that getsockopt fails: this very listener. Refuse such a connection instead of
  # looping into ourselves; the refusals are counted (dcon) and reported.
  tcp-request connection reject if {{ dst_port {OUTBOUND_PORT} }}
  server original 0.0.0.0
listen {FRONTEND_HTTP}
  bind 127.0.0.1:{EXPLICIT_HTTP_PORT}
  server nginx {server_v4}:{HTTP_PORT}
listen {FRONTEND_IPERF}
  bind 127.0.0.1:{EXPLICIT_IPERF_PORT}
  server iperf {server_v4}:{IPERF_PORT}
"""


def nginx_config(workdir: str, address: str) -> str:
    """One worker, no master, nothing written outside `workdir` (run with -p workdir -e ...)."""
    temp = "\n".join(f"  {kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi"))
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
  worker_connections 8000;
}}
http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
{temp}
  server {{
    listen {address}:{HTTP_PORT} backlog=4096;
    location / {{
      return 200 "{BODY.strip()}\\n";
    }}
  }}
}}
"""


def nginx_argv(workdir: str, conf: str, version: tuple[int, ...]) -> list[str]:
    """nginx on `conf`, its early error log in `workdir` too where nginx has -e (1.19.5+; Debian
    11 ships 1.18, which then writes only start-up errors to its default log)."""
    argv = ["nginx", "-p", workdir, "-c", conf]
    return argv[:3] + ["-e", os.path.join(workdir, "error.log")] + argv[3:] if version >= (1, 19, 5) else argv


def excluded_ports(count: int) -> list[int]:
    """`count` distinct ports from 20000 up, none of them a port the measured traffic uses."""
    ports = [p for p in range(EXCLUDED_PORT_START, 65536) if p not in TRAFFIC_PORTS][:count]
    if len(ports) < count:
        raise ValueError(f"cannot exclude {count} ports: at most {len(ports)} are available")
    return ports


def excluded_cidrs(count: int) -> list[str]:
    """`count` distinct /30 networks of 198.19.0.0/16 (at most 16384)."""
    subnets = EXCLUDED_CIDR_POOL.subnets(new_prefix=EXCLUDED_CIDR_PREFIX)
    cidrs = []
    for _ in range(count):
        try:
            cidrs.append(str(next(subnets)))
        except StopIteration:
            raise ValueError(f"cannot exclude {count} CIDRs: {EXCLUDED_CIDR_POOL} holds "
                             f"{len(cidrs)} /{EXCLUDED_CIDR_PREFIX} networks") from None
    return cidrs


def exclusion_config(count: int) -> str:
    """A tpctl --config file (kumactl's schema) excluding `count` outbound ports and `count`
    CIDRs. A file, not flags: 10,000 CIDRs overflow one argv string (MAX_ARG_STRLEN, 128 KiB)."""
    doc = {"redirect": {"outbound": {"excludePorts": excluded_ports(count),
                                     "excludePortsForIPs": excluded_cidrs(count)}}}
    return yaml.safe_dump(doc, default_flow_style=None, width=1 << 20)


def cpu_layout(cpus: list[int]) -> dict[str, list[int]]:
    """Which CPUs the client, the sidecar and the server are pinned to, the same in every case.
    With 3+ CPUs each gets its own; with 2 the client (where the redirect itself runs: connect
    hook or nat OUTPUT) gets one and sidecar and server share the other, so `direct` has the
    same two CPUs as the proxied cases; with 1 all share it."""
    cpus = sorted(cpus)
    if not cpus:
        raise ValueError("no CPU available")
    if len(cpus) >= 3:
        return {"client": [cpus[0]], "sidecar": [cpus[1]], "server": [cpus[2]]}
    if len(cpus) == 2:
        return {"client": [cpus[0]], "sidecar": [cpus[1]], "server": [cpus[1]]}
    return {"client": cpus, "sidecar": cpus, "server": cpus}


def taskset(cpus: list[int], argv: list[str]) -> list[str]:
    return ["taskset", "-c", ",".join(str(c) for c in cpus), *argv]
