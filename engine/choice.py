"""Choice: (Config, HostFacts, each engine's checks) -> which engine, its own choices, and why. Pure.

Engines are asked in registry order; the first the config requests whose required checks all
pass is chosen. A requested engine whose checks fail is a fallback to the next requested, said with
every failed check, or exit 3 under --no-fallback. The registry's last engine is the default.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable, Union

from engine import registry
from engine.config import Config
from engine.contract import Check, Choice, families
from engine.errors import UnsupportedHost
from engine.probe import HostFacts

__all__ = ["Check", "Choice", "choose", "families"]


ChecksOf = Union[Mapping[str, Sequence[Check]], Callable[[registry.RedirectEngine], Sequence[Check]], None]


def choose(config: Config, facts: HostFacts, checks: ChecksOf = None) -> Choice:
    """`checks`: each requested engine's checks, by engine name or as a function asked only for
    the engines the choice reaches (the pipeline probes lazily); an engine a mapping lacks is
    judged by its base_checks, from HostFacts alone."""
    fams, fam_reason = families(config, facts)
    engines = registry.engines()
    asked = [(e, why) for e in engines for why in [e.requested(config)] if why is not None]
    fallbacks: list[str] = []
    judged: list[Check] = []  # every requested engine's checks, for status --json
    # a requested engine that cannot run falls back to the next one requested (the default last)
    for (engine, requested), successor in zip(asked, [*(e for e, _w in asked[1:]), None]):
        if callable(checks):
            found = tuple(checks(engine))
        else:
            found = tuple((checks or {}).get(engine.name) or engine.base_checks(config, facts))
        judged += found
        failed = [c for c in found if not c.ok and c.required]
        if failed and successor is not None:
            if config.no_fallback:
                raise UnsupportedHost(f"{engine.title} engine cannot run here and --no-fallback is set:\n" +
                                      "\n".join(c.line() for c in failed))
            fallbacks.append(engine.fallback_reason(requested, failed, successor))
            continue
        own, why = engine.choose(config, facts)
        if fallbacks:
            first = fallbacks
        elif successor is None:  # the default, nothing else asked for
            first = [f"{engine.title} engine (the default; "
                     + "; ".join(f"{e.selected_by} selects {e.title}" for e in engines[:-1]) + ")"]
        else:
            first = [engine.chosen_reason(requested)]
        return Choice(engine.name, own.get("backend"), fams, (*first, fam_reason, *why), tuple(judged),
                      own.get("applier"))
    raise UnsupportedHost("no redirect engine is registered")  # the registry always ends with a default
