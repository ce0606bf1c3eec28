"""Worker: swap legacy tables of ONE address family through python-iptables.

Reads {"family", "wait", "tables": [TablePlan as JSON], "save": the iptables-legacy-save of the
family, "claim": the earlier install's untagged rules (live.Claim)} on stdin. Under the xtables
lock it finds our objects in those tables again (so rule positions are exact) and swaps each table in one
commit; prints what it replaced (Owned as JSON) for the undo. Runs as its own process because
libxtables cannot serve IPv4 and IPv6 extensions in the same process (see
LegacyBackend.swap_tables). Exit 1 with the reason on stderr when a commit fails.
"""
from __future__ import annotations

import json
import subprocess
import sys

from engine.iptables import live
from engine.iptables.backends import BackendError, claim_from_json, commit_table, owned_to_json, xtables_lock
from engine.iptables.rules import table_from_json
from engine.timeouts import bound


def main() -> int:
    request = json.load(sys.stdin)
    tables = [table_from_json(t) for t in request["tables"]]
    claim = claim_from_json(request["claim"])
    try:
        with xtables_lock(request["wait"]):
            saved = subprocess.run([request["save"]], capture_output=True, text=True, timeout=bound(60))
            if saved.returncode != 0:
                raise BackendError(f"{request['save']} failed: {saved.stderr.strip()}")
            going = live.find_owned(live.parse_save(saved.stdout), claim, only_tables={t.name for t in tables})
            for table in tables:
                commit_table(request["family"], table, going)
    except BackendError as err:
        print(err, file=sys.stderr)
        return 1
    print(json.dumps(owned_to_json(going)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
