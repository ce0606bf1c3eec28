"""Reading kumactl's golden files and comparing rule sets independent of option order."""
from __future__ import annotations

import re
import shlex
from collections import defaultdict
from pathlib import Path

GOLDEN_MARK = "# ---- golden (verbatim) ----"


def load_golden(path: Path) -> str:
    """The verbatim part of a golden file (after its provenance header)."""
    text = path.read_text(encoding="utf-8")
    body = text.split(GOLDEN_MARK, 1)[1].lstrip("\n")
    return body if body.endswith("\n") else body + "\n"


def _canonical(tokens: list[str]) -> frozenset:
    """A rule's options as a set of (module, option, negated, value); implicit -m tcp/udp dropped."""
    items, module, negate = set(), "", False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "!":
            negate = True
        elif token == "-m":
            # -p tcp implies -m tcp: restore input may leave it out, iptables-save prints it
            module = "" if tokens[i + 1] in ("tcp", "udp") else tokens[i + 1]
            i += 1
        elif token == "-j":
            module = "target:" + tokens[i + 1]
            items.add(("-j", tokens[i + 1], False, ""))
            i += 1
        elif token.startswith("-"):
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") else ""
            key = module if token.startswith("--") else ""
            items.add((key, token, negate, value))
            negate = False
            i += 1 if value else 0
        i += 1
    return frozenset(x for x in items if x[0] != "comment")


def semantic_rules(text: str) -> dict[str, list[frozenset]]:
    """chain -> its rules in order, each as an option set (comments and option order ignored)."""
    chains: dict[str, list[frozenset]] = defaultdict(list)
    table = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:].strip()
        elif re.match(r"^-[AI] ", line):
            tokens = shlex.split(line)
            chain = tokens[1]
            rest = tokens[3:] if tokens[0] == "-I" and tokens[2].isdigit() else tokens[2:]
            chains[f"{table}/{chain}"].append(_canonical(rest))
    return dict(chains)


def rule_set(text: str, verb: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.startswith(verb + " ")}
