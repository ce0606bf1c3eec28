"""The eBPF engine's facade: feature_checks, plan, apply, uninstall, status. Install (compile,
load, pin, attach) and status are here; uninstall and the detaching for an engine switch, which
remove only what the pins prove is ours, are in remove.py (uninstall is re-exported here)."""
from __future__ import annotations

import functools
import os

from engine.contract import Transaction, transaction

from . import cgroup, libbpf, pins, tc
from .catalogue import (
    ATTACH_SK_MSG_VERDICT,
    ATTACH_TYPE_NAMES,
    HOOK_CGROUP,
    HOOK_SK_MSG,
    MAPS,
    META_MAP,
    PROGRAMS,
    SOCKHASH_MAP,
    map_pin_name,
)
from .compile import sources_for, take_compiled
from .errors import EbpfApplyError, EbpfError, EbpfLoadError
from .load import load_program
from .maps import DROPS_MAP, LAYOUTS, TypedMap, read_drops
from .plan import Attachment, EbpfPlan, EbpfPlanError, MapWrite, plan
from .probe import Check, feature_checks
from .remove import _open_pinned, _read_meta, close_pinned, uninstall
from .settings import EbpfSettings

__all__ = ["EbpfSettings", "Check", "EbpfPlan", "EbpfApplyError", "EbpfError", "EbpfPlanError",
           "MapWrite", "Attachment", "feature_checks", "plan", "apply", "uninstall", "status"]


def apply(p: EbpfPlan, tx: Transaction | None = None, record: dict | None = None) -> dict:
    """Make the plan real as steps of `tx` (the install's transaction, which rolls them back on
    any failure), filling in `record` with each object before the kernel call that makes it (the
    transaction journals it at each step). Without tx, in a transaction of its own that raises
    EbpfApplyError."""
    if tx is None:
        with transaction(what="eBPF apply", error=EbpfApplyError) as own:
            return apply(p, own, record)
    record = {} if record is None else record
    s = p.settings
    if pins.list_pins(s.bpffs_path):
        raise EbpfApplyError(f"already installed: {p.pin_dir} holds pins (uninstall first)", [])
    from .reconfigure import layout_key

    record.update({"engine": "ebpf", "bpffs_path": s.bpffs_path, "pin_dir": p.pin_dir,
                   "prog_ids": {}, "pins": [], "attachments": [], "maps": list(MAPS),
                   "tc": None, "skipped": [], "layout": layout_key(p)})
    # every kernel call below is a step of tx, with its undo, and is in the record before it runs
    record["bpffs_mounted_by_us"] = not pins.is_bpffs(s.bpffs_path)
    record["bpffs_mounted_by_us"] = tx.step(
        "mount-bpffs", lambda: _mount_bpffs(tx, s.bpffs_path, record),
        lambda mounted: pins.umount(s.bpffs_path) if mounted else None)
    tx.step("pin-dir", lambda: os.makedirs(p.pin_dir, exist_ok=False),
            lambda _: os.rmdir(p.pin_dir))
    bpf = tx.step("compile", lambda: take_compiled(s.programs_source_path, sources_for(s.accel)),
                  lambda b: b.cleanup())
    fns = _load_all(tx, bpf, p, record)
    for name in MAPS:
        _pin(tx, _map_fd(bpf, name), os.path.join(p.pin_dir, map_pin_name(name)), record)
    for name, fn in fns.items():
        _pin(tx, fn.fd, os.path.join(p.pin_dir, f"prog_{name}"), record)
    for mw in p.maps:
        tx.step(f"map:{mw.map}", functools.partial(_write_map, bpf, mw))  # the maps go with their pins
    meta = {"cgroup_path": os.path.realpath(s.cgroup_path), "tc_ifindex": 0, "tc_prio": 0,
            "clsact_created": False, "accel_attached": False}
    for att in p.attachments:
        if att.program in fns:
            _attach(tx, bpf, fns[att.program], att, record, meta)
    tx.step("meta", lambda: TypedMap(META_MAP, _map_fd(bpf, META_MAP)).put(0, meta))
    tx.at_end(bpf.cleanup)  # our fds, once the install is kept or undone; pins and attachments hold the rest
    return record


def _mount_bpffs(tx: Transaction, path: str, record: dict) -> bool:
    """Mount the bpffs and journal which mount it is at once: uninstall unmounts only that one."""
    mounted = pins.mount_bpffs(path)
    if mounted:
        record["bpffs_mount"] = pins.mount_identity(path)
        tx.intend()
    return mounted


def _map_fd(bpf, name: str) -> int:
    """BCC's Python has no table class for sockhash maps; its C API gives every map's fd."""
    from bcc import lib
    fd = lib.bpf_table_fd(bpf.module, name.encode())
    if fd < 0:
        raise EbpfError(f"compiled object has no map {name}")
    return fd


def _load_all(tx: Transaction, bpf, p: EbpfPlan, record: dict) -> dict:
    fns = {}
    for prog in p.programs:
        try:
            fns[prog.name] = tx.step(f"load:{prog.name}", functools.partial(load_program, bpf, prog))
        except EbpfLoadError as exc:
            if not prog.optional:
                raise
            record["skipped"].append({"program": prog.name, "reason": str(exc).splitlines()[0]})
            continue
        record["prog_ids"][prog.name] = libbpf.prog_info(fns[prog.name].fd)["id"]
    return fns


def _pin(tx: Transaction, fd: int, path: str, record: dict) -> None:
    record["pins"].append(path)
    tx.step(f"pin:{os.path.basename(path)}", lambda: pins.pin(fd, path),
            lambda _: os.unlink(path))


def _write_map(bpf, mw: MapWrite) -> None:
    typed = TypedMap(mw.map, _map_fd(bpf, mw.map))
    for key, value in mw.entries:
        typed.put(key, value)


def cgroup_attachment(program: str, target: str, kind: int, prog_id: int) -> dict:
    """A cgroup attachment as the record keeps it."""
    return {"program": program, "cgroup_path": os.path.realpath(target), "attach_type": kind,
            "attach_type_name": ATTACH_TYPE_NAMES[kind], "prog_id": prog_id}


def sk_msg_attachment(program: str, prog_id: int) -> dict:
    """The sk_msg verdict attachment to the sockhash as the record keeps it."""
    return {"program": program, "map": SOCKHASH_MAP, "attach_type": ATTACH_SK_MSG_VERDICT,
            "attach_type_name": "sk_msg_verdict", "prog_id": prog_id}


def _attach(tx: Transaction, bpf, fn, att: Attachment, record: dict, meta: dict) -> None:
    prog_id = record["prog_ids"][att.program]
    if att.hook == HOOK_CGROUP:
        kind = att.attach_type or 0  # the catalogue gives every cgroup program its attach type
        record["attachments"].append(cgroup_attachment(att.program, att.target, kind, prog_id))
        tx.step(f"attach:{att.program}",
                lambda: cgroup.attach(fn.fd, att.target, kind),
                lambda _: cgroup.detach(fn.fd, att.target, kind))
    elif att.hook == HOOK_SK_MSG:
        map_fd = _map_fd(bpf, SOCKHASH_MAP)
        record["attachments"].append(sk_msg_attachment(att.program, prog_id))
        tx.step(f"attach:{att.program}",
                lambda: libbpf.prog_attach(fn.fd, map_fd, ATTACH_SK_MSG_VERDICT, 0),
                lambda _: libbpf.prog_detach(fn.fd, map_fd, ATTACH_SK_MSG_VERDICT))
        meta["accel_attached"] = True
    else:
        if record["tc"] is None:
            index = tc.ifindex(att.target)
            tc_record = {"iface": att.target, "ifindex": index, "clsact_created": not tc.has_clsact(index),
                         "filters": []}
            record["tc"] = tc_record
            created = tx.step("tc:qdisc", lambda: tc.add_clsact(index),
                              lambda made: tc.del_clsact(index) if made else None)
            tc_record["clsact_created"] = created
            meta.update(tc_ifindex=index, tc_prio=tc.TC_PRIO, clsact_created=created)
        index = record["tc"]["ifindex"]
        flt = tx.step(f"tc:filter:{att.program}",
                      lambda: tc.add_filter(index, att.hook, fn.fd, att.program, prog_id),
                      tc.del_filter)
        record["tc"]["filters"].append(flt.as_record())


def status(bpffs_path: str) -> dict:
    progs, maps = _open_pinned(bpffs_path)
    try:
        meta = _read_meta(maps) or {}
        cg = meta.get("cgroup_path")
        programs = {}
        for prog in PROGRAMS:
            if prog.name not in progs:
                continue
            fd, prog_id = progs[prog.name]
            attached = None
            if prog.hook == HOOK_CGROUP and cg and os.path.isdir(cg):
                attached = prog_id in cgroup.attached_ids(cg, prog.attach_type or 0)
            programs[prog.name] = {"id": prog_id, "hook": prog.hook, "attached": attached}
        index = meta.get("tc_ifindex")
        if index:
            ours = {f.program: f for f in tc.our_filters(index)}
            for name in ("tp_tc_ingress", "tp_tc_egress"):
                if name in programs:
                    programs[name]["attached"] = name in ours and \
                        ours[name].prog_id == programs[name]["id"]
        settings = {name: dict(TypedMap(name, fd).items()) for name, fd in maps.items()
                    if name in LAYOUTS and name != META_MAP}
        drops = read_drops(maps[DROPS_MAP]) if DROPS_MAP in maps else {}
        return {"installed": bool(progs), "pin_dir": pins.pin_dir(bpffs_path),
                "pins": pins.list_pins(bpffs_path), "cgroup_path": cg, "meta": meta,
                "programs": programs, "maps": settings, "drops": drops}
    finally:
        close_pinned(progs, maps)
