"""A reinstall whose programs must change (another bpf_src, a program more or fewer) over an
eBPF install pinned at the same place: make before break, each attachment swapped in one call.

The new programs are compiled afresh and, before they are loaded, each map of the new object
whose shape equals the pinned one is made the pinned map (dup2 onto the fd number the compiled
instructions carry), so the new programs work on the installed maps: the exclusions, the
original destinations of connections in flight, the inbound flows. Then, one step each with
its undo:
  cgroup programs: BPF_PROG_ATTACH with BPF_F_REPLACE in the old program's place;
  tc programs: the filter replaced at its prio and handle (NLM_F_REPLACE);
  sk_msg: attached to the same sockhash (the kernel swaps the map's verdict program);
  a program the new plan adds is attached, one it drops is detached after the swaps;
  pins: each new program is pinned beside the old pin (`<pin>__next`) right after it is loaded,
    before it is attached anywhere (a pin under our directory is what proves a program ours to
    an uninstall after a crash), and renamed over the old pin at the end.
Then the maps get the new configuration as reconfigure.py writes it. A map whose shape changed
cannot be shared: the new one replaces its pin, and its entries start empty (said in the log).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os

from engine.contract import Transaction

from . import cgroup, libbpf, pins, tc
from .catalogue import (
    ATTACH_SK_MSG_VERDICT,
    HOOK_CGROUP,
    HOOK_SK_MSG,
    MAPS,
    META_MAP,
    SOCKHASH_MAP,
    map_pin_name,
)
from .compile import compile_object, sources_for
from .maps import TypedMap
from .plan import EbpfPlan
from .reconfigure import layout_key, rewrite_maps

SHAPE = ("type", "key_size", "value_size", "max_entries", "map_flags")


def possible(p: EbpfPlan, previous: dict) -> bool:
    """Same pin directory and cgroup: the swap needs each old object where its new one goes (a
    program more or fewer, or the tc programs on, off or on another interface, are fine)."""
    cgroups = {a.get("cgroup_path") for a in previous.get("attachments", []) if a.get("cgroup_path")}
    targets = {os.path.realpath(a.target) for a in p.attachments if a.hook == HOOK_CGROUP}
    return previous.get("pin_dir") == p.pin_dir and cgroups == targets


def replace_programs(p: EbpfPlan, tx: Transaction, previous: dict, record: dict, say=lambda _line: None) -> None:
    from .engine import _load_all as load_all
    from .engine import _map_fd as map_fd
    from .engine import cgroup_attachment, sk_msg_attachment
    from .remove import _open_pinned as open_pinned
    from .remove import close_pinned

    s = p.settings
    old_progs, old_maps = open_pinned(s.bpffs_path)
    tx.at_end(functools.partial(close_pinned, old_progs, old_maps))
    record.clear()
    record.update(copy.deepcopy(previous))
    record.update({"prog_ids": {}, "skipped": [], "layout": layout_key(p)})
    bpf = tx.step("compile", lambda: compile_object(s.programs_source_path, sources=sources_for(s.accel)),
                  lambda b: b.cleanup())
    fresh = []
    for name in MAPS:
        new_fd = map_fd(bpf, name)
        old_fd = old_maps.get(name)
        if old_fd is not None and _shape(old_fd) == _shape(new_fd):
            os.dup2(old_fd, new_fd)  # the compiled instructions name new_fd: it is the pinned map now
        else:
            fresh.append(name)
    fns = load_all(tx, bpf, p, record)
    for name, fn in fns.items():  # pinned before attached: an uninstall after a crash proves them ours
        side = os.path.join(p.pin_dir, f"prog_{name}{pins.NEXT}")
        tx.step(f"pin:prog_{name}{pins.NEXT}", functools.partial(pins.pin, fn.fd, side),
                functools.partial(_unpin_if_there, side))
    for name in fresh:  # a map of another shape: the new one takes the pin
        say(f"# map {name} changed shape: the new programs start it empty")
        _repin(tx, map_fd(bpf, name), os.path.join(p.pin_dir, map_pin_name(name)), old_maps.get(name))
    old_attachments = {a["program"]: a for a in previous.get("attachments", [])}
    old_tc = _proven_tc(previous.get("tc") or {}, old_progs)
    new_tc = _tc_place(tx, p, old_tc, record)
    same_iface = new_tc is not None and old_tc.get("ifindex") == new_tc["ifindex"]
    old_filters = {f["program"]: f for f in old_tc.get("filters", [])} if same_iface else {}
    record["attachments"] = []
    for att in p.attachments:
        if att.program not in fns:
            continue
        fn, prog_id = fns[att.program], record["prog_ids"][att.program]
        old = old_progs.get(att.program)
        if att.hook == HOOK_CGROUP:
            kind = att.attach_type or 0
            target = os.path.realpath(att.target)
            record["attachments"].append(cgroup_attachment(att.program, target, kind, prog_id))
            if old is not None and att.program in old_attachments:
                tx.step(f"replace:{att.program}", functools.partial(cgroup.replace, fn.fd, target, kind, old[0]),
                        functools.partial(_unreplace_cgroup, old[0], target, kind, fn.fd))
            else:
                tx.step(f"attach:{att.program}", functools.partial(cgroup.attach, fn.fd, target, kind),
                        functools.partial(_ignoring, cgroup.detach, fn.fd, target, kind))
        elif att.hook == HOOK_SK_MSG:
            sockhash = map_fd(bpf, SOCKHASH_MAP)
            record["attachments"].append(sk_msg_attachment(att.program, prog_id))
            undo = (functools.partial(_reattach_sk_msg, old[0], sockhash) if old is not None
                    else functools.partial(_ignoring, libbpf.prog_detach, fn.fd, sockhash, ATTACH_SK_MSG_VERDICT))
            tx.step(f"replace:{att.program}" if old is not None else f"attach:{att.program}",
                    functools.partial(libbpf.prog_attach, fn.fd, sockhash, ATTACH_SK_MSG_VERDICT, 0), undo)
        else:
            assert new_tc is not None  # _tc_place made it for the plan's tc programs
            was = old_filters.pop(att.program, None)
            if was is not None and old is not None:
                flt = tc.TcFilter.from_record(was)
                swapped = tx.step(f"tc:replace:{att.program}",
                                  functools.partial(tc.replace_filter, flt, fn.fd, att.program, prog_id),
                                  functools.partial(_unreplace_tc, flt, old[0]))
                new_tc["filters"].append(swapped.as_record())
            else:
                added = tx.step(f"tc:filter:{att.program}",
                                functools.partial(tc.add_filter, new_tc["ifindex"], att.hook, fn.fd, att.program,
                                                  prog_id), tc.del_filter)
                new_tc["filters"].append(added.as_record())
    # the old tc filters nothing replaced, and their qdisc if tpctl made it, go after the new ones
    for was in [f for f in old_tc.get("filters", []) if not same_iface or f["program"] in old_filters]:
        flt = tc.TcFilter.from_record(was)
        fd = old_progs.get(was["program"], (-1, 0))[0]
        tx.step(f"tc:remove:{was['program']}", functools.partial(tc.del_filter, flt),
                functools.partial(_ignoring, tc.add_filter, flt.ifindex, flt.direction, fd, flt.program, flt.prog_id))
    if old_tc and not same_iface and old_tc.get("clsact_created"):
        index = old_tc["ifindex"]
        tx.step("tc:qdisc:remove", functools.partial(_del_clsact_if_empty, index),
                lambda deleted: tc.add_clsact(index) if deleted else None)
    for name, (fd, _id) in old_progs.items():  # what the new plan has no use for goes last
        dropped = old_attachments.get(name)
        if name in fns or not dropped:
            continue
        if dropped.get("cgroup_path"):
            kind = dropped["attach_type"]
            tx.step(f"detach:{name}", functools.partial(cgroup.detach, fd, dropped["cgroup_path"], kind),
                    functools.partial(_ignoring, cgroup.attach, fd, dropped["cgroup_path"], kind))
        elif dropped.get("map") == SOCKHASH_MAP:
            sockhash = map_fd(bpf, SOCKHASH_MAP)
            tx.step(f"detach:{name}", functools.partial(libbpf.prog_detach, fd, sockhash, ATTACH_SK_MSG_VERDICT),
                    functools.partial(_reattach_sk_msg, fd, sockhash))
    record["pins"] = [os.path.join(p.pin_dir, map_pin_name(n)) for n in MAPS]
    for name, fn in fns.items():
        path = os.path.join(p.pin_dir, f"prog_{name}")
        record["pins"].append(path)
        _repin(tx, fn.fd, path, old_progs.get(name, (None, 0))[0], pinned_beside=True)
    for name, (fd, _id) in old_progs.items():
        if name not in fns:
            path = os.path.join(p.pin_dir, f"prog_{name}")
            tx.step(f"unpin:prog_{name}", functools.partial(os.unlink, path),
                    functools.partial(_ignoring, pins.pin, fd, path))
    meta = TypedMap(META_MAP, old_maps[META_MAP])
    before = meta.get(0)
    tx.step("meta", lambda: meta.put(0, {**(before or {}), "accel_attached": any(
        a.hook == HOOK_SK_MSG and a.program in fns for a in p.attachments),
        "tc_ifindex": (new_tc or {}).get("ifindex", 0), "tc_prio": tc.TC_PRIO if new_tc else 0,
        "clsact_created": bool((new_tc or {}).get("clsact_created"))}),
        lambda _r: meta.put(0, before) if before else None)
    tx.at_end(bpf.cleanup)
    rewrite_maps(p, tx)  # the new configuration, gapless, on the shared maps


def _tc_place(tx: Transaction, p: EbpfPlan, old_tc: dict, record: dict) -> dict | None:
    """Where the plan's tc programs go (its record part, filters filled in by the caller): the
    old place when it is the same interface, else a clsact made there if missing; None when
    the plan has no tc program."""
    iface = next((a.target for a in p.attachments if a.hook not in (HOOK_CGROUP, HOOK_SK_MSG)), None)
    if iface is None:
        record["tc"] = None
        return None
    index = tc.ifindex(iface)
    if old_tc.get("ifindex") == index:
        record["tc"] = {**old_tc, "filters": []}
        return record["tc"]
    record["tc"] = {"iface": iface, "ifindex": index, "clsact_created": not tc.has_clsact(index), "filters": []}
    created = tx.step("tc:qdisc", functools.partial(tc.add_clsact, index),
                      lambda made: tc.del_clsact(index) if made else None)
    record["tc"]["clsact_created"] = created
    return record["tc"]


def _proven_tc(old_tc: dict, old_progs: dict) -> dict:
    """The previous record's tc part with only the filters the kernel shows running our pinned
    programs: a filter the record names at another's place is never replaced or deleted."""
    if not old_tc.get("ifindex"):
        return old_tc
    from .remove import pinned_ids

    return {**old_tc, "filters": [f.as_record() for f in tc.our_filters(old_tc["ifindex"], pinned_ids(old_progs))]}


def _del_clsact_if_empty(index: int) -> bool:
    """The clsact install made on the interface the tc programs left, unless others' filters hang in it."""
    if not tc.has_clsact(index) or tc.filter_count(index):
        return False
    tc.del_clsact(index)
    return True


def _ignoring(action, *args) -> None:
    """An undo: action(*args), whatever the step returned (its last argument)."""
    action(*args[:-1])


def _shape(fd: int) -> tuple:
    info = libbpf.map_info(fd)
    return tuple(info[k] for k in SHAPE)


def _repin(tx: Transaction, fd: int, path: str, old_fd: int | None, pinned_beside: bool = False) -> None:
    """Pin fd at path: beside it first (unless pinned_beside: done already), then renamed over it
    (one rename: never no pin)."""
    side = path + pins.NEXT  # bpffs refuses names with a dot

    def do() -> None:
        if not pinned_beside:
            pins.pin(fd, side)
        os.replace(side, path)

    def undo(_r) -> None:
        if old_fd is None:
            os.unlink(path)
            return
        pins.pin(old_fd, side)
        os.replace(side, path)

    tx.step(f"pin:{os.path.basename(path)}", do, undo)


def _unpin_if_there(side: str, _r=None) -> None:
    """The undo of an early pin beside: gone already when the rename's undo put the old one back."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(side)


def _unreplace_cgroup(old_fd: int, target: str, kind: int, new_fd: int, _r=None) -> None:
    cgroup.replace(old_fd, target, kind, new_fd)


def _reattach_sk_msg(old_fd: int, sockhash: int, _r=None) -> None:
    libbpf.prog_attach(old_fd, sockhash, ATTACH_SK_MSG_VERDICT, 0)


def _unreplace_tc(flt: tc.TcFilter, old_fd: int, _r=None) -> None:
    tc.replace_filter(flt, old_fd, flt.program, flt.prog_id)
