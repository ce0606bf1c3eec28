"""Results of expensive engine checks, kept between runs in the state directory and keyed by
what decides them (for eBPF: the programs' source, BCC, LLVM and the kernel), so a reinstall
does not compile and verify the programs again to learn what it already knows. Only passed
checks are kept: a failure is judged afresh each time. A cache, not state: unreadable or
missing means "not known", and uninstall removes it with the state file."""
from __future__ import annotations

import json
import os

from engine import state

NAME = state.MEMO_NAME
KEEP = 8  # keys per engine: a few source trees or kernels side by side


class Memo:
    def __init__(self, directory: str | None, writable: bool = True):
        self.directory = directory
        self.writable = writable and directory is not None

    def _all(self) -> dict:
        if self.directory is None:
            return {}
        try:
            with open(os.path.join(self.directory, NAME), encoding="utf-8") as handle:
                found = json.load(handle)
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def get(self, engine: str, key: str):
        entries = self._all().get(engine)
        return entries.get(key) if isinstance(entries, dict) else None

    def put(self, engine: str, key: str, value) -> None:
        if not self.writable:  # a dry run changes nothing, not even the cache
            return
        everything = self._all()
        everything.pop("version", None)
        found = everything.get(engine)
        entries: dict = found if isinstance(found, dict) else {}
        entries.pop(key, None)
        entries[key] = value
        everything[engine] = dict(list(entries.items())[-KEEP:])
        try:
            state.write_json(str(self.directory), NAME, everything)
        except OSError:
            pass  # a cache that cannot be written costs time next run, nothing else


NONE = Memo(None)  # remembers nothing (tests of pure choice code, status)
