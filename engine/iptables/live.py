"""The rules as the kernel has them (iptables-save text), and which of them are ours.

Ours means: a chain named TPCTL_*, a rule tagged with a "tpctl/" comment or jumping to a
TPCTL_ chain (every copy: the tag is the proof), or an untagged copy of a rule tpctl rendered
without comments that the install record may claim (ownership.py: only that many copies, the
ones tpctl placed). Nothing else is ever touched.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from engine.iptables.rules import CHAIN_PREFIX, COMMENT_PREFIX

_COUNTERS = re.compile(r"^(:\S+ \S+) \[\d+:\d+\]$")


@dataclass
class LiveTable:
    name: str
    chains: dict[str, str] = field(default_factory=dict)  # chain -> policy ("-" for user chains)
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, spec) in save order

    def chain_rules(self, chain: str) -> list[str]:
        return [spec for c, spec in self.rules if c == chain]


def parse_save(text: str) -> dict[str, LiveTable]:
    tables: dict[str, LiveTable] = {}
    current: LiveTable | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), LiveTable(line[1:].strip()))
        elif line == "COMMIT":
            current = None
        elif current is not None and line.startswith(":"):
            name, policy = line[1:].split()[:2]
            current.chains[name] = policy
        elif current is not None and line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            current.rules.append((chain, spec))
    return tables


def normalize_save(text: str) -> str:
    """iptables-save text without the volatile parts (header comments, counters)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        lines.append(_COUNTERS.sub(r"\1", line))
    return "\n".join(lines) + "\n"


def is_tagged(chain: str, spec: str) -> bool:
    return (chain.startswith(CHAIN_PREFIX) or f'--comment "{COMMENT_PREFIX}' in spec
            or re.search(rf"-j {CHAIN_PREFIX}\w+", spec) is not None)


Line = tuple[str, str, str]  # (table, chain, spec) as iptables-save prints it


@dataclass(frozen=True)
class Claim:
    """The untagged lines of one family an install record may claim (ownership.claim): how many
    copies it added of each, which of them it inserted (the first copies, else the last), and
    what the record named that it may not claim (reported, left alone)."""

    copies: Mapping[Line, int] = field(default_factory=dict)
    inserted: frozenset[Line] = frozenset()
    refused: tuple[Line, ...] = ()

    def pick(self, positions: Mapping[Line, list[int]]) -> set[int]:
        """Of identical lines in one chain (line -> 1-based positions), the positions claimed."""
        chosen: set[int] = set()
        for line, where in positions.items():
            count = self.copies.get(line, 0)
            if count > 0:
                chosen |= set(where[:count] if line in self.inserted else where[-count:])
        return chosen


NO_CLAIM = Claim()


@dataclass(frozen=True)
class Owned:
    """Our objects in one family: rules in other chains (with their 1-based index) and our chains.
    `by_index`: (table, chain, index) of rules an identical foreign rule precedes, which a
    deletion by text would miss (it deletes the first match): these go by position."""

    rules: tuple[tuple[str, str, int, str], ...]  # (table, chain, index, spec)
    chains: tuple[tuple[str, str, tuple[str, ...]], ...]  # (table, chain, its rules)
    by_index: frozenset[tuple[str, str, int]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.rules or self.chains)

    def lines(self) -> set[tuple[str, str, str]]:
        out = {(t, c, s) for t, c, _, s in self.rules}
        out |= {(t, c, s) for t, c, specs in self.chains for s in specs}
        return out


def find_owned(tables: dict[str, LiveTable], claim: Claim | Set[Line] = NO_CLAIM,
               only_tables: set[str] | None = None) -> Owned:
    """Our objects in these tables: every tagged one, and the untagged copies `claim` owns (a
    plain set of lines claims one copy of each)."""
    if not isinstance(claim, Claim):
        claim = Claim({line: 1 for line in claim})
    rules, chains, by_index = [], [], set()
    for table in tables.values():
        if only_tables is not None and table.name not in only_tables:
            continue
        for chain in table.chains:
            if chain.startswith(CHAIN_PREFIX):
                chains.append((table.name, chain, tuple(table.chain_rules(chain))))
                continue
            specs = table.chain_rules(chain)
            positions: dict[Line, list[int]] = {}
            for index, spec in enumerate(specs, start=1):
                positions.setdefault((table.name, chain, spec), []).append(index)
            claimed = claim.pick({line: where for line, where in positions.items() if line in claim.copies})
            for index, spec in enumerate(specs, start=1):
                if is_tagged(chain, spec) or index in claimed:
                    rules.append((table.name, chain, index, spec))
                    if index in claimed and positions[(table.name, chain, spec)][0] != index:
                        by_index.add((table.name, chain, index))
    return Owned(tuple(rules), tuple(chains), frozenset(by_index))


def deletions(owned: Owned, table: str) -> list[str]:
    """The -D lines of our rules in one table's other chains: by position first, last first, so
    each position still counts the rules as saved; then by text (the first match is ours)."""
    rules = [r for r in owned.rules if r[0] == table]
    positional = sorted((r for r in rules if r[:3] in owned.by_index), key=lambda r: (r[1], -r[2]))
    return ([f"-D {c} {i}" for _t, c, i, _s in positional]
            + [f"-D {c} {s}" for t, c, i, s in rules if (t, c, i) not in owned.by_index])


def removal_script(owned: Owned) -> str:
    """iptables-restore --noflush input that deletes exactly our objects."""
    by_table: dict[str, list[str]] = {}
    for table in dict.fromkeys(t for t, _c, _i, _s in owned.rules):
        by_table[table] = deletions(owned, table)
    for table, chain, _specs in owned.chains:  # flush all first: our chains jump to each other
        by_table.setdefault(table, []).append(f"-F {chain}")
    for table, chain, _specs in owned.chains:
        by_table.setdefault(table, []).append(f"-X {chain}")
    return "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in by_table.items())


def restore_script(owned: Owned) -> str:
    """The inverse of removal_script: puts the removed objects back where they were."""
    by_table: dict[str, list[str]] = {}
    for table, chain, _specs in owned.chains:
        by_table.setdefault(table, []).append(f"-N {chain}")
    for table, chain, specs in owned.chains:
        by_table.setdefault(table, []).extend(f"-A {chain} {s}" for s in specs)
    for table, chain, index, spec in sorted(owned.rules, key=lambda r: (r[0], r[1], r[2])):
        by_table.setdefault(table, []).append(f"-I {chain} {index} {spec}")
    return "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in by_table.items())



# What goes in one table of a swap: our chains (declared, so existing ones are flushed) and the
# restore lines that fill them and hook them in (-A chain spec, -I chain index spec).
Coming = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def swap_script(going: Owned, coming: Coming) -> str:
    """iptables-restore --noflush input that replaces our objects `going` by `coming` in one
    commit per table, which both backends apply atomically (nf_tables: one transaction for the
    whole input), so no packet ever meets a table with neither the old rules nor the new.

    In each table: every chain old or new is declared, which flushes the existing ones (and
    drops their jumps into each other); then the old rules in other chains are deleted, the old
    chains the new install has no use for are deleted, and the new rules are added (our
    deletions first, so the new insert positions count the same foreign rules as a fresh install)."""
    going_tables = {t for t, _c, _i, _s in going.rules} | {t for t, _c, _r in going.chains}
    names = list(coming) + sorted(going_tables - set(coming))
    script = []
    for table in names:
        new_chains, new_lines = coming.get(table, ((), ()))
        old_chains = [c for t, c, _r in going.chains if t == table]
        lines = [f"*{table}"]
        lines += [f":{c} - [0:0]" for c in dict.fromkeys([*new_chains, *old_chains])]
        lines += deletions(going, table)
        lines += [f"-X {c}" for c in old_chains if c not in new_chains]
        lines += list(new_lines)
        if len(lines) > 1:
            script.append("\n".join(lines) + "\nCOMMIT\n")
    return "".join(script)


def coming_of(owned: Owned) -> Coming:
    """Our objects as they were, to put back with swap_script (the undo of a swap)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for table, chain, specs in owned.chains:
        chains, lines = out.setdefault(table, ([], []))
        chains.append(chain)
        lines.extend(f"-A {chain} {s}" for s in specs)
    for table, chain, index, spec in sorted(owned.rules, key=lambda r: (r[0], r[1], r[2])):
        out.setdefault(table, ([], []))[1].append(f"-I {chain} {index} {spec}")
    return {t: (tuple(c), tuple(lines)) for t, (c, lines) in out.items()}
