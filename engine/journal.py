"""The install journal: every object an install makes is written here before the kernel call
that makes it.

journal.json (beside state.json) holds {"committed": bool, "step": the step running,
"installs": [state-shaped records]}: the install being replaced (until the new one commits) and
the one in progress, whose engine record is filled in *before* each object exists (an
attachment, a pin, a tc qdisc, a rule set with its texts, the nf_tables tables it will create,
the bpffs it will mount, ::6/128). An uninstall of those records removes whatever of them exists,
so a crash at any instant is undone by `tpctl uninstall` or by the next install (which removes
everything an uncommitted journal names, then installs).

Committed (the install finished), the journal stays: it is the owner record of what carries no
tag (::6/128, the nf_tables tables and base chains, a mounted bpffs), so uninstall restores the
host exactly when state.json is lost.
"""
from __future__ import annotations

import os

from engine import state

NAME = state.JOURNAL_NAME


def read(directory: str) -> tuple[dict | None, str | None]:
    """The journal, and why it (or an entry of it) is unusable. A damaged entry is left out and
    named, never trusted; the others still count."""
    record, problem = state.read_json(directory, NAME, "journal")
    path = os.path.join(directory, NAME)
    if record is None:
        return None, problem
    if not isinstance(record.get("installs"), list):
        return None, f"the journal {path} has no list of installs"
    if not isinstance(record.get("committed"), bool) or not isinstance(record.get("step"), (str, type(None))):
        return None, f"the journal {path} has no committed flag or step of the right type"
    problems = [(number, state.record_problem(entry)) for number, entry in enumerate(record["installs"])]
    damaged = [f"install {number}: it {why}" for number, why in problems if why]
    record["installs"] = [entry for (_n, why), entry in zip(problems, record["installs"]) if not why]
    return record, (f"the journal {path} has entries this tpctl cannot use, left out ({'; '.join(damaged)})"
                    if damaged else None)


def installs(record: dict | None) -> list[dict]:
    """The install records of a journal as read() returns it: each checked there once (every
    engine's validate_record over records that may hold 20,000 exclusions), the damaged left out."""
    return list((record or {}).get("installs", []))


def write(directory: str, committed: bool, step: str | None, records: list[dict]) -> None:
    state.write_json(directory, NAME, {"committed": committed, "step": step, "installs": records})


def remove(directory: str) -> None:
    state.unlink_in(directory, NAME)
