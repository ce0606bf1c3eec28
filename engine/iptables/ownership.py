"""What an install record may claim beyond the objects that prove themselves ours.

A TPCTL_ chain, a rule with a "tpctl/" comment and a jump to a TPCTL_ chain carry their proof in
the kernel. A rule tpctl rendered without a comment (--disable-comments, or no comment match on
the host) carries none: only the record says it is ours, and records are hints. So the record
may claim an untagged rule only when it is one tpctl renders without comments (the install said
it rendered none, and the rule has the shape of one of the builder's rules in that chain), and
only as many copies as it added. A copy tpctl inserted at the top of its chain is the first of
identical copies, an appended one the last, so a twin another tool made keeps its place.
Everything else a record names is reported and left alone.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from engine.iptables.live import Claim, Line, is_tagged

# the options whose values come from the configuration or the host; the DNS port is fixed
_VALUED = {"-s", "-d", "-i", "-o", "--dports", "--uid-owner", "--to-ports"}
_PORTS = {"--dport", "--sport"}
_DNS_PORT = "53"


def shape(spec: str) -> str:
    """The rule with every configured value blanked: what the builder's grammar fixes."""
    out: list[str] = []
    for word in spec.split(" "):
        previous = out[-1] if out else ""
        blank = previous in _VALUED or (previous in _PORTS and word != _DNS_PORT)
        out.append("*" if blank else word)
    return " ".join(out)


@lru_cache(maxsize=2)
def untagged_shapes(family: int) -> frozenset[tuple[str, str, str]]:
    """(table, chain, shape) of every untagged rule tpctl's builder renders into a chain that is
    not its own, over configurations that together use every feature."""
    from engine import config as config_mod
    from engine.iptables.builder import FamilyInputs, build_family
    from engine.options import BY_FIELD

    server = "2001:2::53" if family == 6 else "198.18.0.53"
    local = "::1" if family == 6 else "127.0.0.53"
    common = {"disable_comments": "true", "iptables_logs": "true", "drop_invalid_packets": "true",
              "exclude_outbound_ips": "198.18.8.0/24,2001:2::/64", "vnet": "docker0:198.18.16.0/24,d6:2001:2:1::/64",
              "exclude_outbound_ports_for_uids": "53,3000-5000:106-108"}
    variants = ({"redirect_dns": "true"}, {"redirect_all_dns_traffic": "true"},
                {"redirect_dns": "true", "redirect_inbound_insert_instead_of_append": "true",
                 "redirect_outbound_insert_instead_of_append": "true"})
    found = set()
    for variant in variants:
        cfg = config_mod.build({name: BY_FIELD[name].parse(text) for name, text in {**common, **variant}.items()})
        for docker in (False, True):
            plan = build_family(cfg, FamilyInputs(family, (server, local), docker_output=docker))
            found |= {(t.name, r.chain, shape(r.spec())) for t in plan.tables for r in t.rules
                      if r.chain not in t.chains and not is_tagged(r.chain, r.spec())}
    return frozenset(found)


def rendered_untagged(family: int, line: Line) -> bool:
    table, chain, spec = line
    return (table, chain, shape(spec)) in untagged_shapes(family)


def claim(family: int, lines: Iterable[Line], inserted: Iterable[Line] = (), comments: bool | None = None) -> Claim:
    """What a record's lines of one family may claim. `comments`: whether that install rendered
    comments (None: an older record that did not say)."""
    copies: Counter = Counter()
    refused = []
    for line in lines:
        table, chain, spec = line
        if is_tagged(chain, spec):
            continue  # found by its tag, every copy
        if comments is not True and rendered_untagged(family, line):
            copies[line] += 1
        elif line not in refused:
            refused.append(line)
    return Claim(dict(copies), frozenset(inserted) & set(copies), tuple(refused))


def claim_of(record: dict | None, family: int) -> Claim:
    """The claim of an install record (its iptables part) in one family."""
    record = record or {}
    key = str(family)
    lines = [tuple(x) for x in (record.get("rules") or {}).get(key, []) if _is_line(x)]
    inserted = [tuple(x) for x in (record.get("inserted") or {}).get(key, []) if _is_line(x)]
    comments = record.get("comments")
    return claim(family, lines, inserted, comments if isinstance(comments, bool) else None)


def _is_line(item: object) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 3 and all(isinstance(x, str) for x in item)


def own(rendered: Iterable[Line], inserted: Iterable[Line] = ()) -> Claim:
    """The claim of lines this very process rendered and applied (a step's undo): no grammar
    to pass, the untagged ones all ours, as many copies as rendered."""
    copies = Counter(line for line in rendered if not is_tagged(line[1], line[2]))
    return Claim(dict(copies), frozenset(inserted) & set(copies))
