"""Results of expensive engine checks, kept between runs in the state directory and keyed by
what decides them (for eBPF: the programs' source, BCC, LLVM and the kernel), so a reinstall
does not compile and verify the programs again to learn what it already knows. Only passed
checks are kept: a failure is judged afresh each time. A cache, not state: unreadable or
missing means "not known", and uninstall removes it with the state file."""
from __future__ import annotations

from engine import state
from engine.errors import ConfigError

NAME = state.MEMO_NAME
KEEP = 8  # keys per engine: a few source trees or kernels side by side


class Memo:
    """`hold`: puts stay in memory until save(), so that an install refused after its checks
    (exit 2 or 3) writes no cache and makes no state directory."""

    def __init__(self, directory: str | None, writable: bool = True, hold: bool = False):
        self.directory = directory
        self.writable = writable and directory is not None
        self.hold = hold
        self._held: dict[str, dict] = {}

    def _all(self) -> dict:
        if self.directory is None:
            return {}
        try:
            found, _problem = state.read_json(self.directory, NAME, "check cache")
        except ConfigError:  # an unsafe state directory: nothing in it is believed
            return {}
        everything = dict(found or {})
        for engine, entries in self._held.items():
            mine = everything.get(engine)
            everything[engine] = {**(mine if isinstance(mine, dict) else {}), **entries}
        return everything

    def get(self, engine: str, key: str):
        entries = self._all().get(engine)
        return entries.get(key) if isinstance(entries, dict) else None

    def put(self, engine: str, key: str, value) -> None:
        if not self.writable:  # a dry run changes nothing, not even the cache
            return
        self._held.setdefault(engine, {}).pop(key, None)
        self._held[engine][key] = value
        if not self.hold:
            self.save()

    def save(self) -> None:
        """Write what put() held (the install is going to apply: the state directory exists)."""
        if not self.writable or not self._held:
            return
        everything = self._all()
        everything.pop("version", None)
        for engine, entries in self._held.items():
            found = everything.get(engine)
            kept: dict = dict(found) if isinstance(found, dict) else {}
            for key in entries:  # the newest last: KEEP drops the oldest
                kept[key] = kept.pop(key)
            everything[engine] = dict(list(kept.items())[-KEEP:])
        self._held = {}
        try:
            state.write_json(str(self.directory), NAME, everything)
        except (OSError, ConfigError):
            pass  # a cache that cannot be written costs time next run, nothing else


NONE = Memo(None)  # remembers nothing (tests of pure choice code, status)
