"""The eBPF engine's facade: feature_checks, plan, apply, uninstall, status."""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field

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


def close_pinned(progs: dict, maps: dict) -> None:
    """Close what _open_pinned opened."""
    for fd, _ in progs.values():
        os.close(fd)
    for fd in maps.values():
        os.close(fd)


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


def _open_pinned(bpffs_path: str) -> tuple[dict, dict]:
    """Pinned programs {name: (fd, id)} and maps {name: fd} under <bpffs>/tpctl/."""
    d = pins.pin_dir(bpffs_path)
    progs, maps = {}, {}
    for entry in pins.list_pins(bpffs_path):
        kind, _, name = entry.partition("_")
        try:
            fd = pins.open_pin(os.path.join(d, entry))
        except OSError:
            continue
        if kind == "prog":
            info = libbpf.prog_info(fd)
            if info["name"] != name.removesuffix(pins.NEXT)[:15]:  # the kernel keeps 15 characters
                os.close(fd)
                continue
            progs[name] = (fd, info["id"])
        elif kind == "map":
            maps[name] = fd
    return progs, maps


def _read_meta(maps: dict) -> dict | None:
    if META_MAP not in maps:
        return None
    meta = TypedMap(META_MAP, maps[META_MAP]).get(0)
    return meta if meta and meta["cgroup_path"] else None


def uninstall(bpffs_path: str, record: dict | None, cgroup_path: str | None,
              warn=lambda line: None) -> list[str]:
    """Remove what the pins under <bpffs>/tpctl prove is ours: the record only says where to
    look; a program, filter or mount it names that no pin proves is said and left alone."""
    removed: list[str] = []
    problem = pins.pin_dir_problem(bpffs_path)
    if problem:
        warn(f"tpctl: warning: {problem}")
    progs, maps = _open_pinned(bpffs_path)
    try:
        _say_unproven_programs(record, progs, bpffs_path, warn)
        meta = _read_meta(maps) or {}
        cgroups = {cgroup_path, meta.get("cgroup_path")}
        cgroups |= {a.get("cgroup_path") for a in (record or {}).get("attachments", [])}
        for cg in sorted(c for c in cgroups if c and os.path.isdir(c)):
            removed += _detach_cgroup(cg, progs)
        for name in ("tp_sk_msg", "tp_sk_msg" + pins.NEXT):
            if name in progs and SOCKHASH_MAP in maps:
                try:
                    libbpf.prog_detach(progs[name][0], maps[SOCKHASH_MAP], ATTACH_SK_MSG_VERDICT)
                    removed.append(f"detached {name} from tp_sock_hash")
                except OSError:
                    pass
        removed += _remove_tc(record, meta, pinned_ids(progs), warn)
        removed += pins.remove_pin_dir(bpffs_path, warn)
    finally:
        close_pinned(progs, maps)
    if _ours_to_unmount(record, bpffs_path, warn):
        try:
            pins.umount(bpffs_path)
        except OSError as err:  # busy (a shell cd'ed into it): everything of ours is gone already
            warn(f"tpctl: warning: left the bpffs at {bpffs_path} mounted ({err.strerror}); nothing of "
                 f"tpctl is in it (fix: umount {bpffs_path} once nothing uses it)")
        else:
            removed.append(f"unmounted bpffs {bpffs_path} (install mounted it)")
    return removed


# Detaching for another engine: these redirect a connection (or a DNS query, or an inbound SYN)
# and go first; the rest answer for connections already redirected (getsockopt's original
# destination, getpeername, the reply rewrites) and go a moment later, so that a connection
# redirected just before the switch still finds its answers.
REDIRECTING = ("tp_sock4_connect", "tp_sock6_connect", "tp_sock4_sendmsg", "tp_sock6_sendmsg", "tp_tc_ingress")
ANSWER_GRACE_S = 0.1


@dataclass
class Detached:
    """What detach_all took off, to put back (the undo) with the fds that keep the programs."""

    progs: dict
    maps: dict
    done: list = field(default_factory=list)  # ("cgroup", name, path, kind) | ("sk_msg", name) | ("tc", TcFilter)

    def close(self) -> None:
        close_pinned(self.progs, self.maps)
        self.progs, self.maps = {}, {}


def detach_all(bpffs_path: str, record: dict | None) -> Detached:
    """Take every attachment of an install off (cgroup, sk_msg, tc), keeping its pins: the
    programs stay loaded, so reattach() can put them back. The redirecting hooks go first."""
    import time

    progs, maps = _open_pinned(bpffs_path)
    out = Detached(progs, maps)
    meta = _read_meta(maps) or {}
    cgroups = {meta.get("cgroup_path")} | {a.get("cgroup_path") for a in (record or {}).get("attachments", [])}
    index = ((record or {}).get("tc") or {}).get("ifindex") or meta.get("tc_ifindex")
    filters = {f.program: f for f in tc.our_filters(index, pinned_ids(progs))} if index else {}
    for group in (REDIRECTING, None):
        for prog in PROGRAMS:
            if (prog.name in REDIRECTING) != (group is not None) or prog.name not in progs:
                continue
            fd, prog_id = progs[prog.name]
            if prog.hook == HOOK_CGROUP:
                kind = prog.attach_type or 0
                for cg in sorted(c for c in cgroups if c and os.path.isdir(c)):
                    if prog_id in cgroup.attached_ids(cg, kind):
                        cgroup.detach(fd, cg, kind)
                        out.done.append(("cgroup", prog.name, cg, kind))
            elif prog.hook == HOOK_SK_MSG and SOCKHASH_MAP in maps:
                with contextlib.suppress(OSError):  # not attached
                    libbpf.prog_detach(fd, maps[SOCKHASH_MAP], ATTACH_SK_MSG_VERDICT)
                    out.done.append(("sk_msg", prog.name))
            elif prog.name in filters:
                tc.del_filter(filters[prog.name])
                out.done.append(("tc", filters[prog.name]))
        if group is not None and out.done:
            time.sleep(ANSWER_GRACE_S)
    return out


def reattach(detached: Detached) -> None:
    """The undo of detach_all: every attachment back, the answering hooks first."""
    for what in reversed(detached.done):
        if what[0] == "cgroup":
            _kind, name, cg, attach_type = what
            cgroup.attach(detached.progs[name][0], cg, attach_type)
        elif what[0] == "sk_msg":
            libbpf.prog_attach(detached.progs[what[1]][0], detached.maps[SOCKHASH_MAP], ATTACH_SK_MSG_VERDICT, 0)
        else:
            flt = what[1]
            tc.add_filter(flt.ifindex, flt.direction, detached.progs[flt.program][0], flt.program, flt.prog_id)


def pinned_ids(progs: dict) -> dict[str, set[int]]:
    """{program: ids of its pins} (an interrupted replacement leaves the new one beside the old)."""
    ids: dict[str, set[int]] = {}
    for name, (_fd, prog_id) in progs.items():
        ids.setdefault(name.removesuffix(pins.NEXT), set()).add(prog_id)
    return ids


def _say_unproven_programs(record: dict | None, progs: dict, bpffs_path: str, warn) -> None:
    """Record ids that no pin holds: another install's programs, or ids reused since; never detached."""
    proven = pinned_ids(progs)
    for name, prog_id in sorted(((record or {}).get("prog_ids") or {}).items()):
        if prog_id not in proven.get(name, ()):
            warn(f"tpctl: warning: the record names program {name} id {prog_id}, which is not pinned under "
                 f"{pins.pin_dir(bpffs_path)}: not tpctl's to detach, left alone")


def _ours_to_unmount(record: dict | None, bpffs_path: str, warn) -> bool:
    """Install mounted this very bpffs (the mount id and device it recorded) and nothing but
    the kernel's own files is in it now."""
    if not (record or {}).get("bpffs_mounted_by_us") or not pins.is_bpffs(bpffs_path):
        return False
    recorded, now = (record or {}).get("bpffs_mount"), pins.mount_identity(bpffs_path)
    if not recorded or recorded != now:
        warn(f"tpctl: warning: left the bpffs at {bpffs_path} mounted: it is not the mount tpctl made "
             f"(recorded {recorded}, found {now})")
        return False
    if pins.holds_others(bpffs_path):
        warn(f"tpctl: warning: left the bpffs at {bpffs_path} mounted: others pinned objects in it")
        return False
    return True


def _detach_cgroup(cg: str, progs: dict) -> list[str]:
    removed = []
    for prog in PROGRAMS:
        for name in (prog.name, prog.name + pins.NEXT):
            if prog.hook != HOOK_CGROUP or name not in progs:
                continue
            fd, prog_id = progs[name]
            kind = prog.attach_type or 0
            if prog_id in cgroup.attached_ids(cg, kind):
                cgroup.detach(fd, cg, kind)
                removed.append(f"detached {prog.name} (id {prog_id}) from {cg} {ATTACH_TYPE_NAMES[kind]}")
    return removed


def _remove_tc(record: dict | None, meta: dict, pinned: dict[str, set[int]], warn) -> list[str]:
    """Our filters (their programs are our pins), then the clsact install made if nothing else
    hangs in it."""
    rec_tc = (record or {}).get("tc") or {}
    index = rec_tc.get("ifindex") or meta.get("tc_ifindex")
    created = rec_tc.get("clsact_created", meta.get("clsact_created", False))
    removed = []
    for idx in [index] if index else tc.all_ifindexes():
        try:
            filters = tc.our_filters(idx, pinned)
        except Exception:  # interface gone with its filters
            continue
        for flt in filters:
            tc.del_filter(flt)
            removed.append(f"removed tc filter {flt.program} ({flt.direction}) from ifindex {idx}")
        if idx == index and created and tc.has_clsact(idx):
            removed += _remove_clsact(idx, warn)
    return removed


def _remove_clsact(index: int, warn) -> list[str]:
    others = tc.filter_count(index)
    if others:
        warn(f"tpctl: warning: left the clsact qdisc on ifindex {index}: it holds {others} filter entries "
             "that are not tpctl's")
        return []
    tc.del_clsact(index)
    return [f"removed clsact qdisc from ifindex {index}"]


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
