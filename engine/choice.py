"""Choice: (Config, HostFacts, eBPF checks) -> which engine and backend, and why. Pure."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from engine.config import Config
from engine.errors import UnsupportedHost
from engine.probe import HostFacts, kernel_version

MIN_EBPF_KERNEL = (5, 7)
# The fixes for the two checks both the pure fallback below and ebpf/probe.py make: one text each.
KERNEL_FIX = "boot a kernel >= 5.7, or use the iptables engine"
CGROUP2_FIX = "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified"


@dataclass(frozen=True)
class Check:
    """One eBPF precondition and its result; `required=False` ones may fail without fallback."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"[{mark}] {self.name}: {self.detail}" + ("" if self.ok or not self.fix else f" (fix: {self.fix})")


@dataclass(frozen=True)
class Choice:
    engine: str  # "iptables" | "ebpf"
    backend: str | None  # iptables backend: "legacy" | "nft"; None for eBPF
    families: tuple[int, ...]  # 4 and/or 6
    reasons: tuple[str, ...]
    checks: tuple[Check, ...] = field(default_factory=tuple)
    applier: str | None = None  # how the backend writes: APPLIERS; None for eBPF


    def to_json(self) -> dict:
        return asdict(self)


# What writes the rules of each backend: legacy has two appliers for the same rendered plan.
PYTHON_IPTABLES = "python-iptables"
LEGACY_RESTORE = "iptables-legacy-restore"
NFT_RESTORE = "iptables-nft-restore"


def base_ebpf_checks(config: Config, facts: HostFacts) -> list[Check]:
    """The checks that need only HostFacts; program-load probes come from the ebpf package."""
    release = facts.kernel_release
    checks = [Check("kernel", kernel_version(release) >= MIN_EBPF_KERNEL,
                    f"release {release}, eBPF engine needs >= {MIN_EBPF_KERNEL[0]}.{MIN_EBPF_KERNEL[1]}",
                    KERNEL_FIX)]
    checks.append(Check("cgroup2", facts.cgroup2_mount is not None,
                        f"mounted at {facts.cgroup2_mount}" if facts.cgroup2_mount else "no cgroup2 mount found",
                        CGROUP2_FIX))
    return checks


def choose_backend(config: Config, facts: HostFacts) -> tuple[str, str]:
    """The iptables backend, as kumactl picks it: the one that already holds rules, else the
    one the host's plain `iptables` uses. --iptables-backend overrides."""
    available = {b.name: b for b in facts.backends if b.available}
    if config.iptables_backend != "auto":
        if config.iptables_backend not in available:
            raise UnsupportedHost(f"--iptables-backend {config.iptables_backend}: iptables-{config.iptables_backend}"
                                  "-save was not found (fix: apt-get install iptables)")
        return config.iptables_backend, f"--iptables-backend {config.iptables_backend}"
    if not available:
        raise UnsupportedHost("no iptables found (neither iptables-legacy nor iptables-nft): "
                              "fix: apt-get install iptables")
    holding = [b.name for b in available.values() if b.rule_lines > 0]
    if len(holding) == 1:
        return holding[0], f"{holding[0]} already holds rules"
    default = "nft" if facts.iptables_default == "nf_tables" else "legacy"
    if default not in available:
        default = next(iter(available))
    why = "both backends hold rules" if holding else "no backend holds rules yet"
    return default, f"{why}; `iptables` on this host uses {default}"


def families(config: Config, facts: HostFacts) -> tuple[tuple[int, ...], str]:
    if config.ip_family_mode == "ipv4":
        return (4,), "--ip-family-mode ipv4"
    if facts.has_ipv6:
        return (4, 6), "dualstack: the host has IPv6 addresses"
    return (4,), "dualstack, but the host has no non-loopback IPv6 address: IPv6 skipped"


def choose(config: Config, facts: HostFacts, ebpf_checks: list[Check] | None = None) -> Choice:
    fams, fam_reason = families(config, facts)
    reasons = [fam_reason]
    checks: tuple[Check, ...] = ()
    if config.ebpf_enabled:
        checks = tuple(ebpf_checks if ebpf_checks is not None else base_ebpf_checks(config, facts))
        failed = [c for c in checks if not c.ok and c.required]
        if not failed:
            return Choice("ebpf", None, fams, ("--ebpf-enabled and every eBPF check passed", *reasons), checks)
        if config.no_fallback:
            raise UnsupportedHost("eBPF engine cannot run here and --no-fallback is set:\n" +
                                  "\n".join(c.line() for c in failed))
        reasons.insert(0, "--ebpf-enabled, but eBPF checks failed; falling back to iptables: " +
                       "; ".join(c.line() for c in failed))
    else:
        reasons.insert(0, "iptables engine (the default; --ebpf-enabled selects eBPF)")
    backend, why = choose_backend(config, facts)
    reasons.append(f"backend {backend}: {why}")
    applier = NFT_RESTORE
    if backend == "legacy":
        applier, why = choose_legacy_applier(config, facts)
        reasons.append(f"legacy applier {applier}: {why}")
    return Choice("iptables", backend, fams, tuple(reasons), checks, applier)


def choose_legacy_applier(config: Config, facts: HostFacts) -> tuple[str, str]:
    """python-iptables when its self-test passed here, else iptables-legacy-restore with the
    same rendered plan (python-iptables 1.2.0 cannot parse iptables 1.8.11's extensions)."""
    problem = facts.python_iptables_problem
    if config.legacy_applier == "restore":
        return LEGACY_RESTORE, "--legacy-applier restore"
    if config.legacy_applier == "python-iptables":
        if problem:
            raise UnsupportedHost(f"--legacy-applier python-iptables: its self-test failed here: {problem} "
                                  "(fix: --legacy-applier auto, which applies the same rules with "
                                  "iptables-legacy-restore)")
        return PYTHON_IPTABLES, "--legacy-applier python-iptables"
    if problem:
        return LEGACY_RESTORE, f"python-iptables cannot build tpctl's rules here ({problem}; ldx/python-iptables#353)"
    return PYTHON_IPTABLES, "python-iptables builds every rule tpctl writes here"
