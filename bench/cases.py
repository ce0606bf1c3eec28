"""The cases: where the client connects and which tpctl install (if any) redirects it.

  direct           client -> srv, no proxy (the floor of the path)
  explicit         client -> the sidecar's own port, no redirection (the floor for any redirect)
  iptables-nft     client -> srv address, redirected by the iptables engine, nf_tables backend
  iptables-legacy  the same with the legacy (xtables) backend; both are measured because they
                   evaluate rules differently and scale differently
  nftables         the same with the native nftables engine (one `table inet tpctl`, exclusions
                   in named sets)
  ebpf             the same with the eBPF engine
  ebpf-noaccel     eBPF with the sk_msg/sockhash local acceleration switched off
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.configs import (
    EXPLICIT_HTTP_PORT,
    EXPLICIT_IPERF_PORT,
    FRONTEND_HTTP,
    FRONTEND_IPERF,
    FRONTEND_OUTBOUND,
    HTTP_PORT,
    IPERF_PORT,
)

ROUTE_DIRECT, ROUTE_EXPLICIT, ROUTE_REDIRECT = "direct", "explicit", "redirect"


@dataclass(frozen=True)
class Case:
    name: str
    route: str
    engine: str | None = None          # "iptables-nft" | "iptables-legacy" | "nftables" | "ebpf"
    extra_flags: tuple[str, ...] = ()  # install flags beyond the engine's

    def target(self, kind: str, server_v4: str) -> tuple[str, int]:
        """(host, port) the client connects to for `kind` "http" or "iperf"."""
        if self.route == ROUTE_EXPLICIT:
            return "127.0.0.1", EXPLICIT_HTTP_PORT if kind == "http" else EXPLICIT_IPERF_PORT
        return server_v4, HTTP_PORT if kind == "http" else IPERF_PORT

    def frontend(self, kind: str) -> str | None:
        """The HAProxy frontend this case's traffic must go through (None: it must not)."""
        if self.route == ROUTE_DIRECT:
            return None
        if self.route == ROUTE_EXPLICIT:
            return FRONTEND_HTTP if kind == "http" else FRONTEND_IPERF
        return FRONTEND_OUTBOUND


CASES: dict[str, Case] = {c.name: c for c in (
    Case("direct", ROUTE_DIRECT),
    Case("explicit", ROUTE_EXPLICIT),
    Case("iptables-nft", ROUTE_REDIRECT, "iptables-nft"),
    Case("iptables-legacy", ROUTE_REDIRECT, "iptables-legacy"),
    Case("nftables", ROUTE_REDIRECT, "nftables"),
    Case("ebpf", ROUTE_REDIRECT, "ebpf", ("--ebpf-sk-msg-accel=true",)),
    Case("ebpf-noaccel", ROUTE_REDIRECT, "ebpf", ("--ebpf-sk-msg-accel=false",)),
)}
ALIASES = {"iptables": ("iptables-nft", "iptables-legacy")}
ENGINES = ("iptables-nft", "iptables-legacy", "nftables", "ebpf")  # what the scale sweep and control path cover


def select(names: list[str]) -> list[Case]:
    """Case names (and the alias `iptables` = both backends) in the canonical order."""
    wanted = set()
    for name in names:
        name = name.strip()
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in CASES:
            wanted.add(name)
        else:
            raise ValueError(f"unknown case {name!r}; choose from {', '.join([*CASES, *ALIASES])}")
    return [case for name, case in CASES.items() if name in wanted]


def engines_of(cases: list[Case]) -> list[str]:
    """The engines among `cases`, once each, for the scale sweep and the control path."""
    return [engine for engine in ENGINES if any(c.engine == engine for c in cases)]
