"""The eBPF engine behind the pipeline: Config -> EbpfSettings, checks, install, uninstall, status.

Every flag is either honoured by the eBPF programs, has no meaning without netfilter (said
once, as kumactl does), or cannot be honoured: the last kind fails a check, so the choice
falls back to iptables (or exits 3 with --no-fallback) instead of ignoring the flag.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable

from engine import passthrough, state
from engine.choice import Check, Choice
from engine.config import Config
from engine.errors import ApplyFailed
from engine.probe import HostFacts

Say = Callable[[str], None]

# flag -> why the eBPF engine cannot honour it (a failed check: fall back, never ignore)
UNSUPPORTED = {
    "vnet": "--vnet (forwarded traffic of virtual networks) needs netfilter PREROUTING",
    "iptables_logs": "--iptables-logs writes netfilter LOG rules",
    "drop_invalid_packets": "--drop-invalid-packets needs conntrack's INVALID state",
    "store_firewalld": "--store-firewalld stores netfilter rules",
}
# flag -> why it changes nothing with eBPF (said, not an error)
NO_EFFECT = {
    "skip_dns_conntrack_zone_split": "there is no conntrack zone split with eBPF",
    "disable_comments": "eBPF objects are tagged by their pins, not comments",
    "redirect_inbound_insert_instead_of_append": "there is no rule order with eBPF",
    "redirect_outbound_insert_instead_of_append": "there is no rule order with eBPF",
}

# EbpfSettings field -> the flag it comes from, so plan errors name what the user typed
SETTING_FLAGS = {
    "exclude_outbound_cidrs": "--exclude-outbound-ips", "exclude_inbound_cidrs": "--exclude-inbound-ips",
    "exclude_outbound_ports": "--exclude-outbound-ports", "exclude_inbound_ports": "--exclude-inbound-ports",
    "exclude_outbound_ports_for_uids": "--exclude-outbound-ports-for-uids",
}


def tc_interface(config: Config, facts: HostFacts) -> dict | None:
    """--ebpf-tc-attach-iface, else the first up non-loopback interface with an address."""
    for iface in facts.interfaces:
        if config.ebpf_tc_attach_iface:
            if iface["name"] == config.ebpf_tc_attach_iface:
                return iface
        elif iface["up"] and iface["addresses"]:
            return iface
    return None


def settings_from(config: Config, facts: HostFacts, families: tuple[int, ...]):
    from ebpf.engine import EbpfSettings
    from ebpf.settings import DEFAULT_SOURCE_PATH

    iface = tc_interface(config, facts)
    instance_ips = (config.ebpf_instance_ip,) if config.ebpf_instance_ip else tuple((iface or {}).get("addresses", ()))
    uids = []
    for entry in config.exclude_outbound_ports_for_uids:
        uid_lo, _, uid_hi = entry.uids.partition("-")
        for ports in entry.ports.split(","):
            lo, _, hi = ports.partition(":")
            for proto in entry.protocols:
                uids.append((proto, int(lo), int(hi or lo), int(uid_lo), int(uid_hi or uid_lo)))
    return EbpfSettings(
        proxy_uid=config.proxy_uid, inbound_port=config.redirect_inbound_port,
        outbound_port=config.redirect_outbound_port, dns_port=config.redirect_dns_port,
        redirect_inbound=config.redirect_inbound,
        redirect_dns="all" if config.capture_all_dns else ("servers" if config.redirect_dns else "off"),
        dns_servers=facts.dns_servers,
        exclude_inbound_ports=config.exclude_inbound_ports, exclude_outbound_ports=config.exclude_outbound_ports,
        exclude_inbound_cidrs=tuple(str(n) for n in config.exclude_inbound_ips),
        exclude_outbound_cidrs=tuple(str(n) for n in config.exclude_outbound_ips),
        exclude_outbound_ports_for_uids=tuple(uids), ipv6=6 in families,
        instance_ips=tuple(a for a in instance_ips if a),
        tc_iface=iface["name"] if iface else config.ebpf_tc_attach_iface,
        cgroup_path=facts.cgroup2_mount if config.ebpf_cgroup_path == "auto" else config.ebpf_cgroup_path,
        bpffs_path=config.ebpf_bpffs_path,
        programs_source_path=config.ebpf_programs_source_path or DEFAULT_SOURCE_PATH,
        accel=config.ebpf_sk_msg_accel,
    )


def checks(config: Config, facts: HostFacts) -> list[Check]:
    """Real feature probes (memoised in the ebpf package) plus what the flags ask for."""
    try:
        from ebpf import engine as ebpf_engine
    except ImportError as err:
        return [Check("ebpf package", False, f"cannot import it: {err}", "reinstall tpctl (make setup)")]
    result: list[Check] = []
    for flag, why in UNSUPPORTED.items():
        if getattr(config, flag):
            result.append(Check(f"--{flag.replace('_', '-')}", False, f"{why}; the eBPF engine cannot honour it",
                                "drop the flag, or use the iptables engine"))
    if not config.redirect_outbound:
        result.append(Check("redirect.outbound.enabled", False, "disabling outbound redirection is iptables-only",
                            "use the iptables engine"))
    if tc_interface(config, facts) is None and config.redirect_inbound:
        name = config.ebpf_tc_attach_iface
        result.append(Check("tc interface", False,
                            f"interface {name} not found" if name else "no up non-loopback interface with an address",
                            "give --ebpf-tc-attach-iface IFACE"))
    if config.ebpf_cgroup_path != "auto" and not os.path.isdir(config.ebpf_cgroup_path):
        result.append(Check("cgroup path", False, f"--ebpf-cgroup-path {config.ebpf_cgroup_path} does not exist",
                            "give an existing cgroup2 directory"))
        return result
    settings = settings_from(config, facts, (4,))
    try:  # lists longer than the maps hold: a reason to use iptables, not a crash at install
        ebpf_engine.plan(settings_from(config, facts, (4, 6)))
    except ebpf_engine.EbpfPlanError as err:
        name, _, detail = str(err).partition(": ")
        flag = SETTING_FLAGS.get(name)
        result.append(Check("eBPF maps", False, f"{flag}: {detail}" if flag else str(err),
                            "shorten the list, or use the iptables engine"))
    if config.ebpf_programs_source_path and not os.path.isdir(config.ebpf_programs_source_path):
        result.append(Check("programs source", False, f"{config.ebpf_programs_source_path} is not a directory",
                            "point --ebpf-programs-source-path at a bpf_src directory"))
    return result + list(ebpf_engine.feature_checks(settings))


def notes(config: Config) -> list[str]:
    return [f"# [NOTE] --{flag.replace('_', '-')} has no effect: {why}"
            for flag, why in NO_EFFECT.items() if getattr(config, flag)]


def install(config: Config, facts: HostFacts, choice: Choice, state_dir: str, say: Say, show: Say) -> None:
    from ebpf import engine as ebpf_engine

    settings = settings_from(config, facts, choice.families)
    plan = ebpf_engine.plan(settings)
    for note in notes(config):
        say(note)
    if config.dry_run:
        show(plan.render())
        return
    digest = hashlib.sha256(plan.render().encode()).hexdigest()
    with state.locked(state_dir):
        previous = state.load(state_dir)
        if previous and previous.get("digest") == digest and not status(previous)[1]:
            say("tpctl: already installed with this configuration; nothing changed")
            return
        if previous or os.path.isdir(os.path.join(settings.bpffs_path, "tpctl")):
            _remove_previous(previous, settings.bpffs_path, say)
        added = passthrough.add() if settings.ipv6 else False
        try:
            record = ebpf_engine.apply(plan)
        except BaseException as err:  # Ctrl-C included: the ebpf transaction rolled itself back
            if added:
                passthrough.remove()
            if isinstance(err, ebpf_engine.EbpfError):
                raise ApplyFailed(f"eBPF install failed and was rolled back: {err}") from err
            raise
        record["ipv6_passthrough_added"] = added
        state.save(state_dir, state.install_record("ebpf", digest, choice.to_json(), config.as_dict(),
                                                   ebpf=record))
    skipped = ", ".join(s["program"] for s in record.get("skipped", []))
    say(f"tpctl: installed the eBPF engine ({len(record['prog_ids'])} programs, cgroup {settings.cgroup_path}, "
        f"tc on {settings.tc_iface})" + (f"; optional programs not loaded: {skipped}" if skipped else ""))


def _remove_previous(previous: dict | None, bpffs_path: str, say: Say) -> None:
    """Installing over an earlier install (of either engine) replaces it."""
    from engine.iptables import engine as iptables_engine

    say("# replacing the previous tpctl install")
    if previous is None or previous.get("engine") == "iptables":
        iptables_engine.uninstall(previous)
    uninstall(bpffs_path, (previous or {}).get("ebpf"), dry_run=False)


def uninstall(bpffs_path: str, record: dict | None, dry_run: bool, say: Say = lambda line: None) -> list[str]:
    pin_dir = os.path.join(bpffs_path, "tpctl")
    if not record and not os.path.isdir(pin_dir):
        return []
    if dry_run:
        return [f"{pin_dir}/{name} (and its attachments)" for name in sorted(os.listdir(pin_dir))] \
            if os.path.isdir(pin_dir) else [f"eBPF objects recorded in state under {pin_dir}"]
    from ebpf import engine as ebpf_engine

    cgroup_path = ((record or {}).get("attachments") or [{}])[0].get("cgroup_path")
    removed = ebpf_engine.uninstall(bpffs_path, record, cgroup_path, warn=say)
    if (record or {}).get("ipv6_passthrough_added"):
        passthrough.remove()
        removed.append("lo: remove ::6/128")
    return removed


def status(record: dict) -> tuple[dict, list[str]]:
    """The kernel's view of what is installed, and how it differs from the record."""
    from ebpf import engine as ebpf_engine

    ebpf_record = record.get("ebpf", {})
    live = ebpf_engine.status(ebpf_record.get("bpffs_path", ""))
    drift = []
    for name, prog_id in ebpf_record.get("prog_ids", {}).items():
        program = live.get("programs", {}).get(name)
        if program is None:
            drift.append(f"program {name} (id {prog_id}) is no longer pinned")
        elif program["id"] != prog_id:
            drift.append(f"program {name} is id {program['id']}, recorded id {prog_id}")
        elif program["attached"] is False:
            drift.append(f"program {name} (id {prog_id}) is not attached")
    summary = {"pin_dir": live.get("pin_dir"), "cgroup": live.get("cgroup_path"),
               "programs": {n: ("attached" if p["attached"] else "not attached" if p["attached"] is False
                                else "loaded") for n, p in live.get("programs", {}).items()},
               "settings": _non_empty(live.get("maps", {}))}
    return summary, drift


def _non_empty(maps: dict) -> dict:
    """Map contents without empty maps and all-zero array slots (unused uid-range rows)."""
    out = {}
    for name, entries in maps.items():
        kept = {k: v for k, v in entries.items() if not (isinstance(v, dict) and not any(v.values()))}
        if kept:
            out[name] = kept
    return out
