"""The redirect engines, in the order the choice asks them: an engine the config requests and
whose checks pass wins; the last is the default and the fallback of every other.

Adding an engine: write its package (a class implementing engine.contract.RedirectEngine) and
add one line here. Nothing else in the pipeline names an engine.
"""
from __future__ import annotations

import importlib
from functools import lru_cache

from engine.contract import RedirectEngine

ENGINES = (
    "ebpf.redirect:EbpfEngine",  # --ebpf-enabled: cgroup2 + tc programs
    "engine.nftables.redirect:NftablesEngine",  # --nftables-enabled: one native table, inet tpctl
    "engine.iptables.redirect:IptablesEngine",  # the default: kumactl's rules
)


@lru_cache(maxsize=1)
def engines() -> tuple[RedirectEngine, ...]:
    found = []
    for ref in ENGINES:
        module, _, cls = ref.partition(":")
        found.append(getattr(importlib.import_module(module), cls)())
    return tuple(found)


def get(name: str) -> RedirectEngine | None:
    return next((e for e in engines() if e.name == name), None)


def names() -> tuple[str, ...]:
    return tuple(e.name for e in engines())
