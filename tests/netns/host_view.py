"""Everything of the app namespace an install may touch, for strict before/after comparisons:
every iptables table of both backends and families, the nft ruleset, lo's addresses, tc qdiscs
and filters on the sandbox's veth, the sandbox cgroup's attachments, its bpffs (contents and
mounts) and the state directory."""
from __future__ import annotations

import os
import re

from tests.netns.conftest import snapshot


def host_view(sandbox) -> dict:
    view = {f"iptables {k}": v for k, v in snapshot(sandbox).items()}
    view["nft"] = nft_ruleset(sandbox.run(sandbox.app, ["nft", "list", "ruleset"]).stdout)
    view["lo"] = sandbox.run(sandbox.app, ["ip", "addr", "show", "dev", "lo"]).stdout
    view["tc qdisc"] = sandbox.run(sandbox.app, ["tc", "qdisc", "show", "dev", sandbox.app_if]).stdout
    view["tc filters"] = "".join(sandbox.run(sandbox.app, ["tc", "filter", "show", "dev", sandbox.app_if, d]).stdout
                                 for d in ("ingress", "egress"))
    view["cgroup"] = sandbox.run(sandbox.app, ["bpftool", "cgroup", "show", sandbox.cgroup]).stdout
    bpffs = os.path.join(sandbox.tmp, "bpffs")
    view["bpffs"] = sorted(os.listdir(bpffs)) if os.path.isdir(bpffs) else None
    view["mounted bpffs"] = sorted(line.split()[4] for line in open("/proc/self/mountinfo", encoding="utf-8")
                                   if line.split()[4].startswith(sandbox.tmp))
    view["state"] = os.path.exists(os.path.join(sandbox.state_dir, "state.json"))
    view["journal"] = os.path.exists(os.path.join(sandbox.state_dir, "journal.json"))
    return view


def nft_ruleset(text: str) -> dict:
    """`nft list ruleset` as {table: {chain: [lines]}}: the order of rules in a chain counts, the
    order in which tables and chains are listed (their creation order) does not. nft prints an
    xtables target (iptables-nft's REDIRECT) translated ("redirect to :15001"), as `xt target
    "REDIRECT"` (nft 1.1, Debian 13) or not at all, depending on which family's table was made
    first: that text is left out here; the iptables-nft-save view above compares those rules
    exactly. Counters are traffic, not configuration: left out too."""
    tables: dict = {}
    table = chain = None
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("table "):
            table = tables.setdefault(line.rstrip(" {"), {})
        elif line.startswith("chain ") and table is not None:
            chain = table.setdefault(line.rstrip(" {"), [])
        elif line and line != "}" and chain is not None:
            line = re.sub(r"counter packets \d+ bytes \d+", "counter", line)  # traffic, not configuration
            chain.append(re.sub(r'\s*(redirect to :\d+|xt target "?\w+"?)$', "", line))
    return tables
