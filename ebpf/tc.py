"""tc attachments through pyroute2: a clsact qdisc and direct-action bpf filters.

Ownership: each filter's name is "<program>#<prog id>" at our fixed priority, so uninstall can
find exactly our filters without a state file. The name is a hint anyone can copy: a filter is
proven ours only when the program the kernel runs in it is the one pinned under that name
(`our_filters(index, pinned)`), and a clsact qdisc goes only when no filter is left in it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.contract import netlink

from .catalogue import HOOK_TC_EGRESS, HOOK_TC_INGRESS

TC_PRIO = 49152          # a fixed, high pref number: after filters others add with defaults
TC_HANDLE = 1
PARENTS = {HOOK_TC_INGRESS: 0xFFFFFFF2, HOOK_TC_EGRESS: 0xFFFFFFF3}  # clsact ingress/egress
_NAME_RE = re.compile(r"(tp_[a-z0-9_]+)#(\d+)")  # fullmatch: `$` would take a trailing newline


@dataclass(frozen=True)
class TcFilter:
    ifindex: int
    direction: str        # HOOK_TC_*
    prio: int
    handle: int
    program: str
    prog_id: int

    def as_record(self) -> dict:
        return {"ifindex": self.ifindex, "direction": self.direction, "prio": self.prio,
                "handle": self.handle, "program": self.program, "prog_id": self.prog_id}

    @classmethod
    def from_record(cls, record: dict) -> TcFilter:
        return cls(record["ifindex"], record["direction"], record["prio"], record["handle"], record["program"],
                   record["prog_id"])


def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def ifindex(iface: str) -> int:
    found = [link["index"] for link in netlink.links() if link["name"] == iface]
    if not found:
        raise OSError(f"no interface {iface!r} in this network namespace")
    return found[0]


def has_clsact(index: int) -> bool:
    with _ipr() as ipr:
        return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def add_clsact(index: int) -> bool:
    """Adds clsact unless present; True when we created it."""
    if has_clsact(index):
        return False
    with _ipr() as ipr:
        ipr.tc("add", "clsact", index)
    return True


def del_clsact(index: int) -> None:
    with _ipr() as ipr:
        ipr.tc("del", "clsact", index)


def add_filter(index: int, direction: str, prog_fd: int, program: str, prog_id: int) -> TcFilter:
    with _ipr() as ipr:
        ipr.tc("add-filter", "bpf", index, f":{TC_HANDLE}", fd=prog_fd,
               name=f"{program}#{prog_id}", parent=PARENTS[direction], classid=1,
               direct_action=True, prio=TC_PRIO)
    return TcFilter(index, direction, TC_PRIO, TC_HANDLE, program, prog_id)


def replace_filter(flt: TcFilter, prog_fd: int, program: str, prog_id: int) -> TcFilter:
    """The filter at flt's place (interface, direction, prio, handle) runs prog from now on:
    one RTM_NEWTFILTER with NLM_F_REPLACE, the classifier swaps its program under RCU."""
    with _ipr() as ipr:
        ipr.tc("replace-filter", "bpf", flt.ifindex, flt.handle, fd=prog_fd, name=f"{program}#{prog_id}",
               parent=PARENTS[flt.direction], classid=1, direct_action=True, prio=flt.prio)
    return TcFilter(flt.ifindex, flt.direction, flt.prio, flt.handle, program, prog_id)


def del_filter(flt: TcFilter) -> None:
    with _ipr() as ipr:
        ipr.tc("del-filter", "bpf", flt.ifindex, flt.handle, parent=PARENTS[flt.direction],
               prio=flt.prio)


def our_filters(index: int, pinned: dict[str, set[int]] | None = None) -> list[TcFilter]:
    """Filters on index whose name carries our tag, in both clsact directions (read with
    engine.netlink: status and a reinstall check them without importing pyroute2). With
    `pinned` ({program: ids of its pins}), only those whose kernel program is one of them."""
    found = []
    for direction, parent in PARENTS.items():
        for flt in netlink.bpf_filters(index, parent):
            match = _NAME_RE.fullmatch(flt["name"])
            if not match:
                continue
            program, named_id = match.group(1), int(match.group(2))
            if pinned is not None and not (named_id == flt["prog_id"] and named_id in pinned.get(program, ())):
                continue
            found.append(TcFilter(index, direction, flt["prio"], flt["handle"], program, named_id))
    return found


def filter_count(index: int) -> int:
    """Filters of any kind and owner left under the clsact qdisc, ingress and egress."""
    with _ipr() as ipr:
        # every entry counts, a priority's header (handle 0) too: a clsact is kept on any doubt
        return sum(len(ipr.get_filters(index=index, parent=parent)) for parent in PARENTS.values())


def all_ifindexes() -> list[int]:
    return [link["index"] for link in netlink.links()]
