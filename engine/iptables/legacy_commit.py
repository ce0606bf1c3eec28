"""Worker: commit legacy tables of ONE address family through python-iptables.

Reads {"family", "wait", "tables": [TablePlan as JSON]} on stdin. Runs as its own process
because libxtables cannot serve IPv4 and IPv6 extensions in the same process (see
LegacyBackend.apply_tables). Exit 1 with the reason on stderr when a commit fails.
"""
from __future__ import annotations

import json
import sys

from engine.iptables.backends import BackendError, commit_table
from engine.iptables.rules import table_from_json


def main() -> int:
    request = json.load(sys.stdin)
    try:
        for table in request["tables"]:
            commit_table(request["family"], table_from_json(table), request["wait"])
    except BackendError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
