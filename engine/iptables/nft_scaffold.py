"""The nf_tables tables and base chains that iptables-nft creates on first use.

Legacy x_tables always has its tables and built-in chains; nf_tables has none until a rule needs
one, and iptables-nft then creates `table ip nat` and its `PREROUTING`/`OUTPUT` base chains. Our
rules and TPCTL_ chains go at uninstall, but that scaffold would stay behind, empty. So install
records which tables and base chains were new, and uninstall deletes those, only while they are
still empty: anything another tool put there since keeps them.

The table and chain names come from a record, a file anyone who could write the state dir may
have crafted: nft joins its argv words and parses the result, so `nat; delete table inet x`
would be two commands. A name reaches nft only when it passes tpctl's grammar, and only inside a
JSON command on stdin, where it is a string, never syntax.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter

from engine.iptables import live
from engine.iptables.backends import BackendError
from engine.iptables.rules import BUILTIN_CHAINS
from engine.timeouts import bound

NFT_FAMILY = {4: "ip", 6: "ip6"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")  # iptables' table and chain names fit it


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.match(name) is not None


Scaffold = tuple[frozenset[str], frozenset[tuple[str, str]]]  # (tables, (table, chain))


def from_save(save_text: str) -> Scaffold:
    """Tables and chains as iptables-nft-save reports them. It prints every built-in chain of a
    table that exists, also those nf_tables does not have (see read)."""
    tables = live.parse_save(save_text)
    return frozenset(tables), frozenset((t.name, c) for t in tables.values() for c in t.chains)


def read(family: int, save_text: str) -> Scaffold:
    """The tables and chains nf_tables really holds in this family, as nft lists them: a table
    another tool made with only an OUTPUT chain has no PREROUTING until our rules need one, and
    that chain is then install's to remove. Without the nft tool: the save text's view."""
    try:
        tables = _nft("-j", "list", "tables", NFT_FAMILY[family])
        chains = _nft("-j", "list", "chains", NFT_FAMILY[family])
    except BackendError:
        return from_save(save_text)
    if tables.returncode != 0 or chains.returncode != 0:
        return from_save(save_text)
    names = frozenset(o["table"]["name"] for o in _objects(tables.stdout) if "table" in o)
    return names, frozenset((o["chain"]["table"], o["chain"]["name"]) for o in _objects(chains.stdout) if "chain" in o)


def _objects(text: str) -> list[dict]:
    try:
        return [o for o in json.loads(text).get("nftables", []) if isinstance(o, dict)]
    except (ValueError, AttributeError):
        return []


def _hooks(tables) -> set[tuple[str, str]]:
    """The base chains our rules go into (TablePlans: chains not of our own)."""
    return {(t.name, r.chain) for t in tables for r in t.rules if r.chain not in t.chains}


def _ours_if_new(tables, new_tables: set[str]) -> set[tuple[str, str]]:
    """The base chains that are install's when they appear: those our rules go into, and in a
    table install creates every built-in one (some iptables-nft versions make them all at once)."""
    return _hooks(tables) | {(t, c) for t in new_tables for c in BUILTIN_CHAINS.get(t, ())}


def created(before: Scaffold, after: Scaffold, tables) -> dict:
    """What applying these TablePlans added besides our own chains: {"tables": [...], "chains":
    [[table, chain]]}, never more than they needed (what another tool made meanwhile is not ours)."""
    new_tables = set((after[0] - before[0]) & {t.name for t in tables})
    return {"tables": sorted(new_tables),
            "chains": sorted([t, c] for t, c in (after[1] - before[1]) & _ours_if_new(tables, new_tables))}


def expected(before: Scaffold, tables) -> dict:
    """What applying these TablePlans may create: the tables not there yet and the base chains
    that would then be install's (recorded before the apply; created() after)."""
    new_tables = {t.name for t in tables} - before[0]
    return {"tables": sorted(new_tables),
            "chains": sorted([t, c] for t, c in _ours_if_new(tables, new_tables) - before[1])}


def merge(*records: dict | None) -> dict:
    tables, chains = set(), set()
    for record in records:
        tables |= set((record or {}).get("tables", []))
        chains |= {tuple(c) for c in (record or {}).get("chains", [])}
    return {"tables": sorted(tables), "chains": sorted(list(c) for c in chains)}


def _nft(*args: str, command: dict | None = None) -> subprocess.CompletedProcess:
    """nft with fixed argv words, or one JSON command on stdin (names from a record go there)."""
    nft = shutil.which("nft")
    if nft is None:
        raise BackendError("nft not found (fix: apt-get install nftables)")
    if command is None:
        return subprocess.run([nft, *args], capture_output=True, text=True, timeout=bound(60))
    return subprocess.run([nft, "-j", "-f", "/dev/stdin"], input=json.dumps({"nftables": [command]}),
                          capture_output=True, text=True, timeout=bound(60))


def _listing(family: int, table: str) -> list[dict] | None:
    """The table's objects as `nft -j` lists them, None when the table is gone."""
    result = _nft(command={"list": {"table": {"family": NFT_FAMILY[family], "name": table}}})
    if result.returncode != 0:
        return None
    return [obj for obj in json.loads(result.stdout).get("nftables", []) if "metainfo" not in obj]


def remove_if_empty(family: int, record: dict | None, dry_run: bool = False,
                    going: live.Owned | None = None) -> list[str]:
    """Delete the base chains, then the tables, that install created and that hold nothing now.
    Each table is listed once, and what goes is decided from that listing before anything does.
    `going`: on a dry run our rules and chains are still there; they count as removed already."""
    fam = NFT_FAMILY[family]
    created_chains = {tuple(c) for c in (record or {}).get("chains", []) if isinstance(c, list) and len(c) == 2}
    created_tables = set((record or {}).get("tables", []))
    removed = []
    named = {t for t in created_tables if isinstance(t, str)} | {t for t, _ in created_chains if isinstance(t, str)}
    for table in sorted(named):
        if not valid_name(table) or not all(valid_name(c) for t, c in created_chains if t == table):
            removed.append(f"left alone nf_tables {fam} table {table!r}: the install record names it (or a chain "
                           "in it) outside tpctl's grammar, so it is not one tpctl made")
            continue
        objects = _listing(family, table)
        if objects is None:
            continue
        empty, whole_table = what_goes(objects, table, created_chains, table in created_tables, going)
        for chain in empty:
            if not dry_run:
                _checked(_nft(command={"delete": {"chain": {"family": fam, "table": table, "name": chain}}}))
            removed.append(f"nft {fam} {table}: delete chain {chain} (empty; install created it)")
        if whole_table:
            if not dry_run:
                _checked(_nft(command={"delete": {"table": {"family": fam, "name": table}}}))
            removed.append(f"nft {fam}: delete table {table} (empty; install created it)")
    return removed


def what_goes(objects: list[dict], table: str, created_chains: set[tuple[str, str]], table_created: bool,
              going: live.Owned | None = None) -> tuple[list[str], bool]:
    """From one table's `nft -j` listing: the base chains install created that hold no rule (once
    `going` is gone), and whether the table is then empty and install's to delete."""
    gone_chains = {c for t, c, _ in (going.chains if going else ()) if t == table}
    gone_rules = Counter(c for t, c, _, _ in (going.rules if going else ()) if t == table)
    rules = Counter(o["rule"].get("chain") for o in objects if "rule" in o)
    in_use = {c for c, n in rules.items() if c not in gone_chains and n > gone_rules[c]}
    chains = [o["chain"]["name"] for o in objects if "chain" in o and o["chain"]["name"] not in gone_chains]
    empty = sorted(c for c in chains if (table, c) in created_chains and c not in in_use)
    # sets, maps, flowtables...: anything else another tool made keeps the table too
    others = [o for o in objects if not {"table", "chain", "rule"} & set(o)]
    left = [c for c in chains if c not in empty] + others
    return empty, table_created and not left


def _checked(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        raise BackendError(f"nft failed: {result.stderr.strip()}")
