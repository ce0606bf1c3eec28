"""The eBPF engine on the redirect-engine contract: Config -> EbpfSettings, checks, plan, apply,
uninstall, status, leftovers.

Every flag is either honoured by the eBPF programs, has no meaning without netfilter (said
once, as kumactl does), or cannot be honoured: the last kind fails a check, so the choice
falls back to iptables (or exits 3 with --no-fallback) instead of ignoring the flag.
"""
from __future__ import annotations

import os

from engine.contract import (
    NONE,
    Check,
    Choice,
    Config,
    EnginePlan,
    HostFacts,
    Memo,
    RedirectEngine,
    Say,
    Transaction,
    default_of,
    families,
    shape_problem,
)

from .requirements import cgroup2_check, kernel_check
from .settings import DEFAULT_SOURCE_PATH, EbpfSettings

# flag -> why the eBPF engine cannot honour it (a failed check: fall back, never ignore)
UNSUPPORTED = {
    "vnet": "--vnet (forwarded traffic of virtual networks) needs netfilter PREROUTING",
    "iptables_logs": "--iptables-logs writes netfilter LOG rules",
    "drop_invalid_packets": "--drop-invalid-packets needs conntrack's INVALID state",
    "store_firewalld": "--store-firewalld stores netfilter rules",
    "include_inbound_ports": "--include-inbound-ports (redirect.inbound.includePorts): the eBPF programs "
                             "redirect every port but the excluded ones; they have no include list",
    "include_outbound_ports": "--include-outbound-ports (redirect.outbound.includePorts): the eBPF programs "
                              "redirect every port but the excluded ones; they have no include list",
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
    "tc_iface": "--ebpf-tc-attach-iface",
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


def settings_from(config: Config, facts: HostFacts, fams: tuple[int, ...]) -> EbpfSettings:
    from .settings import interface_link_type

    iface = tc_interface(config, facts)
    tc_name = iface["name"] if iface else config.ebpf_tc_attach_iface
    instance_ips = (config.ebpf_instance_ip,) if config.ebpf_instance_ip else tuple((iface or {}).get("addresses", ()))
    uids = [(proto, port_lo, port_hi, *entry.uid_range)
            for entry in config.exclude_outbound_ports_for_uids
            for port_lo, port_hi in entry.port_ranges for proto in entry.protocols]
    return EbpfSettings(
        proxy_uid=config.proxy_uid, inbound_port=config.redirect_inbound_port,
        outbound_port=config.redirect_outbound_port, dns_port=config.redirect_dns_port,
        redirect_inbound=config.redirect_inbound,
        redirect_dns="all" if config.capture_all_dns else ("servers" if config.redirect_dns else "off"),
        dns_servers=facts.dns_servers,
        exclude_inbound_ports=config.exclude_inbound_ports, exclude_outbound_ports=config.exclude_outbound_ports,
        exclude_inbound_cidrs=tuple(str(n) for n in config.exclude_inbound_ips),
        exclude_outbound_cidrs=tuple(str(n) for n in config.exclude_outbound_ips),
        exclude_outbound_ports_for_uids=tuple(uids), ipv6=6 in fams,
        instance_ips=tuple(a for a in instance_ips if a),
        tc_iface=tc_name,
        # read here, in the namespace the engine runs in: the plan turns it into the L2 length
        tc_link_type=interface_link_type(tc_name) if tc_name else None,
        cgroup_path=(facts.cgroup2_mount or "") if config.ebpf_cgroup_path == "auto" else config.ebpf_cgroup_path,
        bpffs_path=config.ebpf_bpffs_path,
        programs_source_path=config.ebpf_programs_source_path or DEFAULT_SOURCE_PATH,
        accel=config.ebpf_sk_msg_accel,
        kernel_release=facts.kernel_release, cgroup2_mount=facts.cgroup2_mount,
    )


class EbpfEngine(RedirectEngine):
    name = "ebpf"
    title = "eBPF"
    selected_by = "--ebpf-enabled"

    def __init__(self) -> None:
        self._planned: tuple | None = None  # (config, facts, fams, settings, plan or error): plan once

    def requested(self, config: Config) -> str | None:
        return "--ebpf-enabled" if config.ebpf_enabled else None

    def base_checks(self, config: Config, facts: HostFacts) -> list[Check]:
        return [kernel_check(facts.kernel_release), cgroup2_check(facts.cgroup2_mount)]

    def _plan_for(self, config: Config, facts: HostFacts, fams: tuple[int, ...]):
        """The settings and the plan (or the error planning raised) for these inputs, made once."""
        from .plan import EbpfPlanError, plan

        last = self._planned
        if last is None or last[0] is not config or last[1] is not facts or last[2] != fams:
            settings = settings_from(config, facts, fams)
            try:
                result: object = plan(settings)
            except EbpfPlanError as err:
                result = err
            self._planned = last = (config, facts, fams, settings, result)
        return last[3], last[4]

    def checks(self, config: Config, facts: HostFacts, memo: Memo = NONE) -> list[Check]:
        """Real feature probes (memoised in the ebpf package) plus what the flags ask for."""
        try:
            from .plan import EbpfPlanError
            from .probe import feature_checks
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
        settings, planned = self._plan_for(config, facts, families(config, facts)[0])
        if isinstance(planned, EbpfPlanError):  # lists longer than the maps hold: use iptables, not a crash
            name, _, detail = str(planned).partition(": ")
            setting_flag = SETTING_FLAGS.get(name)
            if name == "tc_iface":  # a link type the tc programs cannot parse: refused, never guessed
                result.append(Check("tc interface", False, f"{setting_flag}: {detail}",
                                    "attach tc to an Ethernet, tun or WireGuard interface with "
                                    "--ebpf-tc-attach-iface, or use the iptables engine"))
            else:
                result.append(Check("eBPF maps", False, f"{setting_flag}: {detail}" if setting_flag else str(planned),
                                    "shorten the list, or use the iptables engine"))
        bpffs_problem = _bpffs_path_problem(config.ebpf_bpffs_path)
        if bpffs_problem:  # the engine cannot be used here: no compile or load is worth its time
            result.append(Check("bpffs path", False, bpffs_problem, "give an empty directory or a mounted bpffs"))
            return result
        if config.ebpf_programs_source_path and not os.path.isdir(config.ebpf_programs_source_path):
            result.append(Check("programs source", False, f"{config.ebpf_programs_source_path} is not a directory",
                                "point --ebpf-programs-source-path at a bpf_src directory"))
        return result + list(feature_checks(settings, memo))

    def plan(self, config: Config, facts: HostFacts, choice: Choice) -> EnginePlan:
        from .errors import EbpfError

        _settings, planned = self._plan_for(config, facts, choice.families)
        if isinstance(planned, EbpfError):
            raise planned
        assert isinstance(planned, EnginePlan)
        return planned

    def notes(self, config: Config, facts: HostFacts, choice: Choice) -> list[str]:
        return [f"# [NOTE] --{flag.replace('_', '-')} has no effect: {why}"
                for flag, why in NO_EFFECT.items() if getattr(config, flag)]

    def remove_previous(self, tx: Transaction, config: Config, record: dict | None) -> None:
        """Another engine redirects now: an earlier eBPF install (recorded, or pinned under this
        bpffs) goes. Its attachments come off in an undoable step (the pins keep the programs,
        so a later failure puts them back); the pins, the clsact qdisc and the bpffs go once the
        install is committed (no traffic meets them any more)."""
        from . import remove

        path = self._previous_at(config, record)
        if path is None:
            return
        detached = tx.step("detach the previous eBPF programs", lambda: remove.detach_all(path, record),
                           remove.reattach)
        tx.at_end(detached.close)
        tx.at_commit(lambda: self.uninstall(record, {"ebpf_bpffs_path": path}, False, lambda _line: None))

    def _previous_at(self, config: Config, record: dict | None) -> str | None:
        """The bpffs of an earlier eBPF install (recorded, or pinned under this bpffs), or None."""
        from . import pins

        path = (record or {}).get("bpffs_path") or config.ebpf_bpffs_path
        return path if record or pins.list_pins(path) else None  # a pin dir that passes the proof

    def _remove_now(self, tx: Transaction, config: Config, record: dict | None) -> None:
        """The earlier eBPF install goes before a new one is made in its place (no undo: its
        programs cannot be put back once their pins are gone)."""
        path = self._previous_at(config, record)
        if path is not None:
            tx.step("remove the previous eBPF install", lambda: self.uninstall(record, {"ebpf_bpffs_path": path},
                                                                               False, lambda _line: None))

    def apply(self, tx: Transaction, config: Config, plan: EnginePlan, previous: dict | None, record: dict) -> None:
        """Over an eBPF install whose programs are attached as this plan wants them, only the maps
        change (reconfigure.py): nothing detached, nothing compiled. When the programs must
        change in the same pin directory, cgroup and interface, the new ones take each old
        attachment's place in one call, on the installed maps (replace.py). Otherwise (another
        bpffs, cgroup or tc interface, or an install that drifted) the earlier install goes
        first and everything is made anew."""
        from . import engine as ebpf_engine
        from . import replace
        from .reconfigure import layout_key, update_maps

        in_force = bool(previous) and not self.status(previous or {})[2]
        if in_force and previous and previous.get("layout") == layout_key(plan):  # type: ignore[arg-type]
            update_maps(plan, tx, previous, record)  # type: ignore[arg-type]
        elif in_force and previous and replace.possible(plan, previous):  # type: ignore[arg-type]
            replace.replace_programs(plan, tx, previous, record, tx.log)  # type: ignore[arg-type]
        else:
            self._remove_now(tx, config, previous)
            ebpf_engine.apply(plan, tx, record)  # type: ignore[arg-type]

    def installed_line(self, plan: EnginePlan, record: dict) -> str:
        s = plan.settings  # type: ignore[attr-defined]
        skipped = ", ".join(x["program"] for x in record.get("skipped", []))
        return (f"tpctl: installed the eBPF engine ({len(record['prog_ids'])} programs, cgroup {s.cgroup_path}, "
                f"tc on {s.tc_iface})" + (f"; optional programs not loaded: {skipped}" if skipped else ""))

    def _bpffs(self, record: dict | None, options: dict) -> str:
        return (record or {}).get("bpffs_path") or options.get("ebpf_bpffs_path") or default_of("ebpf_bpffs_path")

    def uninstall(self, record: dict | None, options: dict, dry_run: bool, say: Say) -> list[str]:
        from . import pins

        bpffs_path = self._bpffs(record, options)
        pin_dir = pins.pin_dir(bpffs_path)
        found = pins.list_pins(bpffs_path)  # none when the pin dir is not a real directory on a bpffs
        if not record and not found:
            return []
        if dry_run:  # reads only: what the pins prove would go, and what fails the proof
            problem = pins.pin_dir_problem(bpffs_path)
            if problem:
                say(f"# {problem}")
            if problem:  # nothing there is provably ours: nothing would go
                return []
            return [f"{pin_dir}/{name} (and its attachments)" for name in found] if found \
                else [f"eBPF objects recorded in state under {pin_dir}"]
        from . import remove

        cgroup_path = ((record or {}).get("attachments") or [{}])[0].get("cgroup_path")
        return remove.uninstall(bpffs_path, record, cgroup_path, warn=say,
                                proven=options.get("removal", {}).setdefault("ebpf_proven", set()))

    def status(self, record: dict) -> tuple[dict, list[str], list[str]]:
        """The kernel's view of what is installed, and how it differs from the record."""
        from . import engine as ebpf_engine

        live = ebpf_engine.status(record.get("bpffs_path", ""))
        drift = []
        for name, prog_id in record.get("prog_ids", {}).items():
            program = live.get("programs", {}).get(name)
            if program is None:
                drift.append(f"program {name} (id {prog_id}) is no longer pinned")
            elif program["id"] != prog_id:
                drift.append(f"program {name} is id {program['id']}, recorded id {prog_id}")
            elif program["attached"] is False:
                drift.append(f"program {name} (id {prog_id}) is not attached")
        programs = {n: ("attached" if p["attached"] else "not attached" if p["attached"] is False else "loaded")
                    for n, p in live.get("programs", {}).items()}
        summary = {"pin_dir": live.get("pin_dir"), "cgroup": live.get("cgroup_path"), "programs": programs,
                   "settings": _non_empty(live.get("maps", {})), "tc_drops": live.get("drops", {})}
        return summary, _status_lines(record, live, programs), drift

    def validate_record(self, record: dict) -> str | None:
        tc = record.get("tc")
        return shape_problem(record, RECORD_SHAPE, "ebpf") or (shape_problem(tc, TC_SHAPE, "ebpf.tc") if tc else None)

    def leftovers(self, options: dict) -> list[str]:
        from . import engine as ebpf_engine

        bpffs_path = self._bpffs(None, options)
        live = ebpf_engine.status(bpffs_path)
        found = [f"pin {live['pin_dir']}/{name}" for name in live.get("pins", [])]
        found += [f"eBPF program {name} (id {p['id']}) attached to {live.get('cgroup_path') or p['hook']}"
                  for name, p in live.get("programs", {}).items() if p["attached"]]
        return found


def _bpffs_path_problem(path: str) -> str | None:
    """Why no bpffs can be used or mounted at --ebpf-bpffs-path (a failed check: the fallback
    serves the host), or None."""
    from .pins import is_bpffs, mount_point_problem, pin_dir_problem

    return mount_point_problem(path) or (pin_dir_problem(path) if is_bpffs(path) else None)


# engine.apply's record, as status, uninstall and apply read it back (tc: None, or TC_SHAPE)
RECORD_SHAPE = {"bpffs_path": str, "pin_dir": str, "prog_ids": {"*": int}, "pins": [str], "maps": [str],
                "attachments": [{"program": str, "cgroup_path": str, "attach_type": int, "attach_type_name": str,
                                 "prog_id": int, "map": str}],
                "tc": (dict, type(None)), "skipped": [{"program": str, "reason": str}], "layout": str,
                "bpffs_mounted_by_us": bool}
TC_SHAPE = {"iface": str, "ifindex": int, "clsact_created": bool,
            "filters": [{"ifindex": int, "direction": str, "prio": int, "handle": int, "program": str, "prog_id": int}]}


def _status_lines(record: dict, live: dict, programs: dict) -> list[str]:
    """What a person reads: where the programs hang, what they redirect, what they exclude."""
    by_state: dict[str, list[str]] = {}
    for name, state in programs.items():
        by_state.setdefault(state, []).append(name)
    lines = [f"pins: {live.get('pin_dir')} ({len(live.get('pins', []))} objects)"]
    tc = record.get("tc") or {}
    cgroup_names = [n for n in by_state.get("attached", []) if not n.startswith("tp_tc_")]
    tc_names = [n for n in by_state.get("attached", []) if n.startswith("tp_tc_")]
    if cgroup_names:
        lines.append(f"cgroup {live.get('cgroup_path')}: {len(cgroup_names)} programs attached "
                     f"({', '.join(sorted(cgroup_names))})")
    if tc_names:
        lines.append(f"tc on {tc.get('iface', '?')}: {', '.join(sorted(tc_names))}")
    for state in ("loaded", "not attached"):
        if by_state.get(state):
            lines.append(f"{state}: {', '.join(sorted(by_state[state]))}")
    for skipped in record.get("skipped", []):
        lines.append(f"not loaded (optional): {skipped['program']}: {skipped['reason']}")
    settings = (live.get("maps", {}).get("tp_settings") or {}).get(0) or {}
    if settings:
        dns = {1: "to the name servers", 2: "all"}.get(int(settings.get("redirect_dns") or 0))
        lines.append(f"redirects: outbound to :{settings.get('outbound_port')}, inbound "
                     + (f"to :{settings.get('inbound_port')}" if settings.get("redirect_inbound") else "off")
                     + (f", DNS ({dns}) to :{settings.get('dns_port')}" if dns else ", DNS not redirected")
                     + f"; proxy uid {settings.get('proxy_uid')} "
                     f"excluded; IPv6 {'on' if settings.get('ipv6') else 'off'}; sk_msg acceleration "
                     f"{'on' if settings.get('accel') else 'off'}")
    drops = live.get("drops") or {}
    if any(drops.values()):  # what tc ingress could not redirect soundly (docs/ebpf-packets.md)
        lines.append("dropped at tc ingress: " + ", ".join(f"{count} {reason.replace('_', ' ')}"
                                                            for reason, count in drops.items() if count))
    maps = live.get("maps", {})
    for title, names in (("excluded outbound ports", ("tp_excl_out_ports",)),
                         ("excluded inbound ports", ("tp_excl_in_ports",)),
                         ("excluded outbound networks", ("tp_excl_out_v4", "tp_excl_out_v6")),
                         ("excluded inbound networks", ("tp_excl_in_v4", "tp_excl_in_v6"))):
        keys = [str(k) for n in names for k in (maps.get(n) or {})]
        if keys:
            lines.append(f"{title}: {', '.join(sorted(keys))}")
    return lines


def _non_empty(maps: dict) -> dict:
    """Map contents without empty maps and all-zero array slots (unused uid-range rows)."""
    out = {}
    for name, entries in maps.items():
        kept = {k: v for k, v in entries.items() if not (isinstance(v, dict) and not any(v.values()))}
        if kept:
            out[name] = kept
    return out
