"""A reinstall over an eBPF install whose programs are loaded, pinned and attached as the new
plan would make them: the programs stay attached and only the maps change, so no connection is
ever outside the redirect and nothing is compiled.

The maps are written in an order that never opens a hole: every map first gains its new
entries (exclusions, name servers, instance addresses, uid rows), then the settings switch,
then the entries the new configuration no longer has go. In between, a lookup finds the old
entry or the new one, never neither. Each write is a step of the install's transaction whose
undo puts the map's earlier contents back, so a failure half-way leaves the previous
configuration in force.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from typing import Any

from engine.contract import Transaction

from . import pins
from .catalogue import HOOK_CGROUP, map_pin_name
from .compile import amalgamate, sources_for
from .maps import TypedMap
from .plan import EbpfPlan

SETTINGS_MAP = "tp_settings"
ROWS_MAP = "tp_uid_port_excl"  # an array: rows are zeroed, not deleted
ZERO_ROW = {"uid_lo": 0, "uid_hi": 0, "port_lo": 0, "port_hi": 0, "proto": 0}


def layout_key(p: EbpfPlan) -> str:
    """What must be equal for an update in place: the programs' source (the text BCC compiles),
    which programs there are and where each is attached."""
    s = p.settings
    sources = sources_for(s.accel)
    shape = {
        "source": hashlib.sha256(amalgamate(s.programs_source_path, sources).encode()).hexdigest(),
        "sources": list(sources), "programs": [prog.name for prog in p.programs],
        "attachments": [[a.program, a.hook, os.path.realpath(a.target) if a.hook == HOOK_CGROUP else a.target]
                        for a in p.attachments],
        "pin_dir": p.pin_dir,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def write_order(old: dict[str, dict], new: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """The map writes that take `old` contents to `new` without a hole, in order: (map,
    "add" | "switch" | "remove", the entries to put or to take out). Pure."""
    others = [name for name in new if name != SETTINGS_MAP]
    order = []
    for name in others:
        adding = {k: v for k, v in new[name].items() if old[name].get(k) != v}
        if adding:
            order.append((name, "add", adding))
    if old[SETTINGS_MAP].get(0) != new[SETTINGS_MAP][0]:
        order.append((SETTINGS_MAP, "switch", {0: new[SETTINGS_MAP][0]}))
    for name in others:
        stale = {k: v for k, v in old[name].items()
                 if k not in new[name] and not (name == ROWS_MAP and v == ZERO_ROW)}
        if stale:
            order.append((name, "remove", stale))
    return order


STEP_NAMES = {"add": "add the new entries", "switch": "switch", "remove": "remove the old entries"}


def update_maps(p: EbpfPlan, tx: Transaction, previous: dict, record: dict) -> None:
    """The previous install's objects become this install's (the record says so before any
    map changes); the maps are rewritten as steps of tx, each undone by the old contents."""
    record.clear()
    record.update(copy.deepcopy(previous))
    record["layout"] = layout_key(p)
    rewrite_maps(p, tx)


def rewrite_maps(p: EbpfPlan, tx: Transaction) -> None:
    """The pinned maps from what they hold to what the plan wants, in write_order, as steps."""
    typed: dict[str, TypedMap] = {}
    for mw in p.maps:
        fd = pins.open_pin(os.path.join(p.pin_dir, map_pin_name(mw.map)))
        tx.at_end(functools.partial(os.close, fd))
        typed[mw.map] = TypedMap(mw.map, fd)
    old = {name: dict(m.items()) for name, m in typed.items()}
    for name, action, entries in write_order(old, {mw.map: dict(mw.entries) for mw in p.maps}):
        tx.step(f"map:{name}: {STEP_NAMES[action]}", functools.partial(_write, typed[name], action, entries),
                functools.partial(_unwrite, typed[name], action, entries, old[name]))


def _write(m: TypedMap, action: str, entries: dict) -> None:
    for key, value in entries.items():
        if action != "remove":
            m.put(key, value)
        elif m.name == ROWS_MAP:  # an array's rows cannot be deleted: zeroed, as never used
            m.put(key, ZERO_ROW)
        else:
            m.delete(key)


def _unwrite(m: TypedMap, action: str, entries: dict, old: dict, _result: Any = None) -> None:
    """Back to the map's contents before the reconfiguration."""
    for key in entries:
        if key in old:
            m.put(key, old[key])
        else:
            m.delete(key)
