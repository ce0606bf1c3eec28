"""uninstall and status: read State (or, without it, the ownership tags) and act on it."""
from __future__ import annotations

from typing import Callable

from engine import firewalld, state
from engine.iptables import engine as iptables_engine

Say = Callable[[str], None]


def uninstall(state_dir: str, bpffs_path: str | None, dry_run: bool, say: Say) -> list[str]:
    """Remove what install made: from State when there is one, by ownership tags always."""
    if dry_run:  # read only: not even the state directory is created
        return _uninstall(state.load(state_dir), bpffs_path, True, say)
    with state.locked(state_dir):
        removed = _uninstall(state.load(state_dir), bpffs_path, False, say)
        state.remove(state_dir)
    return removed


def _uninstall(record: dict | None, bpffs_path: str | None, dry_run: bool, say: Say) -> list[str]:
    if record is None:
        say("# no state file: finding tpctl objects by their tags (TPCTL_ chains, tpctl/ comments, "
            "pins under <bpffs>/tpctl)")
    removed = iptables_engine.uninstall(record, dry_run=dry_run)
    removed += _uninstall_ebpf(record, bpffs_path, dry_run, say)
    if (record or {}).get("iptables", {}).get("firewalld") or record is None:
        path = None if dry_run else firewalld.remove_ours()
        if path:
            removed.append(f"{path}: tpctl entries")
    return removed


def _uninstall_ebpf(record: dict | None, bpffs_path: str | None, dry_run: bool, say: Say) -> list[str]:
    from engine import ebpf_glue
    from engine.options import BY_FIELD

    ebpf_state = (record or {}).get("ebpf")
    path = (ebpf_state or {}).get("bpffs_path") or bpffs_path or BY_FIELD["ebpf_bpffs_path"].default

    return ebpf_glue.uninstall(path, ebpf_state, dry_run, say)


def status(state_dir: str, bpffs_path: str | None) -> dict:
    """What is installed and whether it drifted; `drift` non-empty means exit code 5."""
    record = state.load(state_dir)
    report: dict = {"installed": record is not None, "state_dir": state_dir, "drift": []}
    if record is None:
        leftovers = _tagged_leftovers()
        if leftovers:
            report["drift"] = [f"not installed (no state), but tpctl objects exist: {x}" for x in leftovers]
        return report
    report.update({k: record.get(k) for k in ("engine", "installed_at", "choice", "config")})
    if record.get("engine") == "iptables":
        ipt = record["iptables"]
        report["iptables"] = {
            "backend": ipt["backend"],
            "applier": ipt.get("applier", "python-iptables" if ipt["backend"] == "legacy" else "iptables-nft-restore"),
            "families": sorted(ipt["chains"]),
            "rules": {fam: len(lines) for fam, lines in ipt["rules"].items()},
            "chains": ipt["chains"],
            "ipv6_passthrough_added": ipt.get("ipv6_passthrough_added", False),
        }
        report["drift"] = iptables_engine.drift(record)
    else:
        from engine import ebpf_glue

        report["ebpf"], report["drift"] = ebpf_glue.status(record)
    return report


def _tagged_leftovers() -> list[str]:
    return [f"{backend.name} IPv{family} chain {c}"
            for backend, family, owned in iptables_engine.owned_everywhere(5) for _t, c, _r in owned.chains]
