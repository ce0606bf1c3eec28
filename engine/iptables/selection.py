"""The iptables engine's own choices: which backend (as kumactl picks it) and, for legacy, which
applier writes the rendered plan. Pure."""
from __future__ import annotations

from engine.config import Config
from engine.errors import UnsupportedHost
from engine.probe import HostFacts

# What writes the rules of each backend: legacy has two appliers for the same rendered plan.
PYTHON_IPTABLES = "python-iptables"
LEGACY_RESTORE = "iptables-legacy-restore"
NFT_RESTORE = "iptables-nft-restore"


def choose_backend(config: Config, facts: HostFacts) -> tuple[str, str]:
    """The backend that already holds rules, else the one the host's plain `iptables` uses.
    --iptables-backend overrides."""
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


def choose(config: Config, facts: HostFacts) -> tuple[dict, list[str]]:
    backend, why = choose_backend(config, facts)
    reasons = [f"backend {backend}: {why}"]
    applier = NFT_RESTORE
    if backend == "legacy":
        applier, why = choose_legacy_applier(config, facts)
        reasons.append(f"legacy applier {applier}: {why}")
    return {"backend": backend, "applier": applier}, reasons
