"""Remove only what the kernel proves is ours: uninstall, and detach_all for an engine switch.

A program is tpctl's when a pin under <bpffs>/tpctl/ holds it (by id, under its own name); a tc
filter when it runs one of those pinned programs; the bpffs when it is the very mount install
recorded and holds nothing of others. The state record only says where to look: what it names
that no pin proves is said and left alone. The opening of the pins (_open_pinned) lives here,
with the proofs; engine.py's status reads through it too.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from . import cgroup, libbpf, pins, tc
from .catalogue import (
    ATTACH_SK_MSG_VERDICT,
    ATTACH_TYPE_NAMES,
    HOOK_CGROUP,
    HOOK_SK_MSG,
    META_MAP,
    PROGRAMS,
    SOCKHASH_MAP,
)
from .maps import TypedMap


def close_pinned(progs: dict, maps: dict) -> None:
    """Close what _open_pinned opened."""
    for fd, _ in progs.values():
        os.close(fd)
    for fd in maps.values():
        os.close(fd)


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
              warn=lambda line: None, proven: set | None = None) -> list[str]:
    """Remove what the pins under <bpffs>/tpctl prove is ours: the record only says where to
    look; a program, filter or mount it names that no pin proves is said and left alone.
    `proven`: (program, id) pairs this removal already proved ours and removed (the state file's
    and the journal's records of one install name the same ones); it grows with this call's."""
    proven = set() if proven is None else proven
    removed: list[str] = []
    problem = pins.pin_dir_problem(bpffs_path)
    if problem:
        warn(f"tpctl: warning: {problem}")
    progs, maps = _open_pinned(bpffs_path)
    try:
        proven |= {(name, prog_id) for name, ids in pinned_ids(progs).items() for prog_id in ids}
        _say_unproven_programs(record, proven, bpffs_path, warn)
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


def _say_unproven_programs(record: dict | None, proven: set, bpffs_path: str, warn) -> None:
    """Record ids that no pin proves (now, or earlier in this removal) and the kernel still has:
    another install's programs, or ids reused since; never detached."""
    for name, prog_id in sorted(((record or {}).get("prog_ids") or {}).items()):
        if (name, prog_id) not in proven and _loaded(prog_id):
            warn(f"tpctl: warning: the record names program {name} id {prog_id}, which is not pinned under "
                 f"{pins.pin_dir(bpffs_path)}: not tpctl's to detach, left alone")


def _loaded(prog_id: int) -> bool:
    """Whether the kernel has a program by this id (validate_record made it an int)."""
    try:
        os.close(libbpf.prog_fd_by_id(prog_id))
    except OSError:
        return False
    return True


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
