"""iptables rules as data, rendered once into the text iptables-save prints.

A rule is rendered in the canonical order iptables-save uses (-s, -d, -i, -o, -p, then the
matches in the order they were added, then -j), so that the rendered text of every rule equals
the line the kernel reports back after install. That equality is what lets uninstall and status
find our rules by text even when comments are disabled.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

CHAIN_PREFIX = "TPCTL_"
COMMENT_PREFIX = "tpctl/"

BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}


@dataclass(frozen=True)
class Option:
    """One `[!] --name value` of a match or target."""

    name: str
    value: str = ""
    negated: bool = False

    def render(self) -> str:
        text = f"--{self.name}" + (f" {self.value}" if self.value != "" else "")
        return f"! {text}" if self.negated else text


@dataclass(frozen=True)
class Match:
    """An iptables match extension (`-m name ...`)."""

    name: str
    options: tuple[Option, ...] = ()

    def render(self) -> str:
        return " ".join([f"-m {self.name}", *(o.render() for o in self.options)])


def quote(text: str) -> str:
    """Quote a string argument the way iptables-save does."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


@dataclass(frozen=True)
class Rule:
    """One rule of one chain. `position` set means "-I chain position", else "-A chain"."""

    chain: str
    target: str
    target_options: tuple[Option, ...] = ()
    source: str | None = None
    source_negated: bool = False
    destination: str | None = None
    destination_negated: bool = False
    in_interface: str | None = None
    out_interface: str | None = None
    protocol: str | None = None
    comment: str | None = None
    matches: tuple[Match, ...] = ()
    position: int | None = None

    def spec(self) -> str:
        """The rule without its chain, exactly as iptables-save prints it after `-A CHAIN`."""
        parts: list[str] = []
        if self.source:
            parts.append(("! " if self.source_negated else "") + f"-s {self.source}")
        if self.destination:
            parts.append(("! " if self.destination_negated else "") + f"-d {self.destination}")
        if self.in_interface:
            parts.append(f"-i {self.in_interface}")
        if self.out_interface:
            parts.append(f"-o {self.out_interface}")
        if self.protocol:
            parts.append(f"-p {self.protocol}")
        if self.comment is not None:
            parts.append(f"-m comment --comment {quote(COMMENT_PREFIX + self.comment)}")
        parts.extend(m.render() for m in self.matches)
        parts.append(" ".join([f"-j {self.target}", *(o.render() for o in self.target_options)]))
        return " ".join(parts)

    def save_line(self) -> str:
        return f"-A {self.chain} {self.spec()}"

    def restore_line(self) -> str:
        if self.position is not None:
            return f"-I {self.chain} {self.position} {self.spec()}"
        return self.save_line()

    def without_comment(self) -> Rule:
        return replace(self, comment=None)


@dataclass(frozen=True)
class TablePlan:
    """What tpctl adds to one table: its own chains, and rules in the order they are applied."""

    name: str
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]

    def restore_text(self) -> str:
        """iptables-restore input for `--noflush`: creates our chains and adds our rules."""
        lines = [f"*{self.name}"]
        lines += [f"-N {c}" for c in self.chains]
        lines += [r.restore_line() for r in self.rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def save_view(self) -> str:
        """What iptables-save prints for this table on a host that had no rules before."""
        lines = [f"*{self.name}"]
        lines += [f":{c} ACCEPT" for c in BUILTIN_CHAINS[self.name]]
        lines += [f":{c} -" for c in sorted(self.chains)]
        for chain in (*BUILTIN_CHAINS[self.name], *sorted(self.chains)):
            in_chain = [r for r in self.rules if r.chain == chain]
            appended = [r for r in in_chain if r.position is None]
            inserted = sorted((r for r in in_chain if r.position is not None), key=lambda r: r.position or 0)
            ordered: list[Rule] = list(appended)
            for r in inserted:  # -I N lands at index N-1 of what is there at that moment
                ordered.insert(min((r.position or 1) - 1, len(ordered)), r)
            lines += [r.save_line() for r in ordered]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FamilyPlan:
    """All tables of one address family (4 = iptables, 6 = ip6tables)."""

    family: int
    tables: tuple[TablePlan, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return f"IPv{self.family}"

    def restore_text(self) -> str:
        return "".join(t.restore_text() for t in self.tables)

    def save_view(self) -> str:
        return "".join(t.save_view() for t in self.tables)


def table_to_json(table: TablePlan) -> dict:
    from dataclasses import asdict

    return asdict(table)


def table_from_json(data: dict) -> TablePlan:
    def rule(r: dict) -> Rule:
        return Rule(**{**r,
                       "target_options": tuple(Option(**o) for o in r["target_options"]),
                       "matches": tuple(Match(m["name"], tuple(Option(**o) for o in m["options"]))
                                        for m in r["matches"])})

    return TablePlan(data["name"], tuple(data["chains"]), tuple(rule(r) for r in data["rules"]))
