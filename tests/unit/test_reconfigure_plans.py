"""The pure parts of a reconfiguration: the iptables swap script and its inverse, the order of
the eBPF map writes, and the checks memo."""
from __future__ import annotations

import json
import os

from ebpf.reconfigure import ROWS_MAP, SETTINGS_MAP, ZERO_ROW, write_order
from engine.iptables import live
from engine.memo import KEEP, Memo

OLD_SAVE = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TPCTL_OUTBOUND - [0:0]
:TPCTL_OLD_ONLY - [0:0]
-A OUTPUT -d 198.18.0.77/32 -j RETURN
-A OUTPUT -p tcp -m comment --comment "tpctl/outbound" -j TPCTL_OUTBOUND
-A TPCTL_OUTBOUND -p tcp -m multiport --dports 7001 -j RETURN
-A TPCTL_OUTBOUND -j TPCTL_OLD_ONLY
-A TPCTL_OLD_ONLY -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""
NEW = {"nat": (("TPCTL_OUTBOUND", "TPCTL_NEW"),
               ('-I OUTPUT 1 -p tcp -m comment --comment "tpctl/outbound" -j TPCTL_OUTBOUND',
                "-A TPCTL_OUTBOUND -p tcp -m multiport --dports 7001,7002 -j RETURN",
                "-A TPCTL_OUTBOUND -j TPCTL_NEW", "-A TPCTL_NEW -p tcp -j REDIRECT --to-ports 15001"))}


def test_a_swap_is_one_commit_per_table_removing_the_old_before_adding_the_new():
    owned = live.find_owned(live.parse_save(OLD_SAVE))
    script = live.swap_script(owned, NEW)
    lines = script.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT" and script.count("COMMIT") == 1
    # every chain old or new declared (existing ones flushed), the foreign rule never named
    assert lines[1:4] == [":TPCTL_OUTBOUND - [0:0]", ":TPCTL_NEW - [0:0]", ":TPCTL_OLD_ONLY - [0:0]"]
    assert "198.18.0.77" not in script
    delete = lines.index('-D OUTPUT -p tcp -m comment --comment "tpctl/outbound" -j TPCTL_OUTBOUND')
    assert lines.index("-X TPCTL_OLD_ONLY") > delete  # its jump went with the flush first
    assert "-X TPCTL_OUTBOUND" not in lines  # kept: flushed by its declaration, refilled
    assert min(lines.index(x) for x in NEW["nat"][1]) > lines.index("-X TPCTL_OLD_ONLY")


def test_the_undo_of_a_swap_puts_the_old_objects_back_where_they_were():
    old = live.find_owned(live.parse_save(OLD_SAVE))
    back = live.coming_of(old)
    chains, lines = back["nat"]
    assert chains == ("TPCTL_OUTBOUND", "TPCTL_OLD_ONLY")
    assert '-I OUTPUT 2 -p tcp -m comment --comment "tpctl/outbound" -j TPCTL_OUTBOUND' in lines
    assert "-A TPCTL_OLD_ONLY -p tcp -j REDIRECT --to-ports 15001" in lines


def test_a_table_with_nothing_going_and_nothing_coming_is_left_out():
    assert live.swap_script(live.Owned((), ()), {"raw": ((), ())}) == ""


SETTINGS = {"proxy_uid": 5678, "outbound_port": 15001}


def _maps(ports=(), rows=None, settings=None):
    return {SETTINGS_MAP: {0: settings or SETTINGS}, "tp_excl_out_ports": {p: 1 for p in ports},
            ROWS_MAP: rows if rows is not None else {i: ZERO_ROW for i in range(4)}}


def test_map_writes_add_first_switch_the_settings_then_remove():
    row = {**ZERO_ROW, "uid_lo": 1, "uid_hi": 1, "port_lo": 1, "port_hi": 2, "proto": 6}
    old = _maps(ports=(7001, 7003), rows={0: row, 1: row, 2: ZERO_ROW, 3: ZERO_ROW})
    new = _maps(ports=(7001, 7002), rows={0: row}, settings={**SETTINGS, "outbound_port": 15002})
    order = write_order(old, {k: v for k, v in new.items()})
    assert [(name, action) for name, action, _e in order] == [
        ("tp_excl_out_ports", "add"), (SETTINGS_MAP, "switch"), ("tp_excl_out_ports", "remove"), (ROWS_MAP, "remove")]
    assert order[0][2] == {7002: 1} and order[2][2] == {7003: 1} and order[3][2] == {1: row}


def test_an_unchanged_configuration_writes_nothing():
    assert write_order(_maps(ports=(7001,)), _maps(ports=(7001,))) == []


def test_the_memo_keeps_the_latest_keys_and_a_dry_run_writes_nothing(tmp_path):
    Memo(str(tmp_path), writable=False).put("ebpf", "k", [1])
    assert not os.path.exists(tmp_path / "checks.json")
    memo = Memo(str(tmp_path))
    for i in range(KEEP + 2):
        memo.put("ebpf", f"k{i}", [i])
    assert memo.get("ebpf", "k0") is None and memo.get("ebpf", f"k{KEEP + 1}") == [KEEP + 1]
    assert len(json.loads((tmp_path / "checks.json").read_text())["ebpf"]) == KEEP


def test_an_unreadable_memo_is_not_known_not_an_error(tmp_path):
    (tmp_path / "checks.json").write_text("{not json")
    assert Memo(str(tmp_path)).get("ebpf", "k") is None
    Memo(str(tmp_path)).put("ebpf", "k", [1])
    assert Memo(str(tmp_path)).get("ebpf", "k") == [1]
