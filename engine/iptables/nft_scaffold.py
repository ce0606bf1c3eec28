"""The nf_tables tables and base chains that iptables-nft creates on first use.

Legacy x_tables always has its tables and built-in chains; nf_tables has none until a rule needs
one, and iptables-nft then creates `table ip nat` and its `PREROUTING`/`OUTPUT` base chains. Our
rules and TPCTL_ chains go at uninstall, but that scaffold would stay behind, empty. So install
records which tables and base chains were new, and uninstall deletes those, only while they are
still empty: anything another tool put there since keeps them.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter

from engine.iptables import live
from engine.iptables.backends import BackendError
from engine.timeouts import bound

NFT_FAMILY = {4: "ip", 6: "ip6"}


def scaffold(save_text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Tables and chains that iptables-nft-save reports."""
    tables = live.parse_save(save_text)
    return set(tables), {(t.name, c) for t in tables.values() for c in t.chains}


def created(before: str, after: str, ours: set[tuple[str, str]]) -> dict:
    """What the apply added besides our own chains: {"tables": [...], "chains": [[table, chain]]}."""
    tables_before, chains_before = scaffold(before)
    tables_after, chains_after = scaffold(after)
    return {"tables": sorted(tables_after - tables_before),
            "chains": sorted([t, c] for t, c in chains_after - chains_before - ours)}


def expected(before: str, tables) -> dict:
    """What applying these TablePlans will create: the tables not there yet and the base chains
    our rules hook into that are not there yet (recorded before the apply; created() after)."""
    tables_before, chains_before = scaffold(before)
    base = {(t.name, r.chain) for t in tables for r in t.rules if r.chain not in t.chains}
    return {"tables": sorted({t.name for t in tables} - tables_before),
            "chains": sorted([t, c] for t, c in base - chains_before)}


def merge(*records: dict | None) -> dict:
    tables, chains = set(), set()
    for record in records:
        tables |= set((record or {}).get("tables", []))
        chains |= {tuple(c) for c in (record or {}).get("chains", [])}
    return {"tables": sorted(tables), "chains": sorted(list(c) for c in chains)}


def _nft(*args: str) -> subprocess.CompletedProcess:
    nft = shutil.which("nft")
    if nft is None:
        raise BackendError("nft not found (fix: apt-get install nftables)")
    return subprocess.run([nft, *args], capture_output=True, text=True, timeout=bound(60))


def _listing(family: int, table: str) -> list[dict] | None:
    """The table's objects as `nft -j` lists them, None when the table is gone."""
    result = _nft("-j", "list", "table", NFT_FAMILY[family], table)
    if result.returncode != 0:
        return None
    return [obj for obj in json.loads(result.stdout).get("nftables", []) if "metainfo" not in obj]


def remove_if_empty(family: int, record: dict | None, dry_run: bool = False,
                    going: live.Owned | None = None) -> list[str]:
    """Delete the base chains, then the tables, that install created and that hold nothing now.
    Each table is listed once, and what goes is decided from that listing before anything does.
    `going`: on a dry run our rules and chains are still there; they count as removed already."""
    fam = NFT_FAMILY[family]
    created_chains = {tuple(c) for c in (record or {}).get("chains", [])}
    created_tables = set((record or {}).get("tables", []))
    removed = []
    for table in sorted(created_tables | {t for t, _ in created_chains}):
        objects = _listing(family, table)
        if objects is None:
            continue
        empty, whole_table = what_goes(objects, table, created_chains, table in created_tables, going)
        for chain in empty:
            if not dry_run:
                _checked(_nft("delete", "chain", fam, table, chain))
            removed.append(f"nft {fam} {table}: delete chain {chain} (empty; install created it)")
        if whole_table:
            if not dry_run:
                _checked(_nft("delete", "table", fam, table))
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
