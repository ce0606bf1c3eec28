"""Can python-iptables express every rule tpctl writes on this host? Probed once, at probe time.

python-iptables 1.2.0 with iptables 1.8.11 (Debian 13) finds only the first option of each
extension: `udp: no such parameter sport`, `multiport: no such parameter dports`
(ldx/python-iptables#353, open). The legacy backend then applies the same rendered plan with
`iptables-legacy-restore --noflush` instead (backends.LegacyBackend), so the breakage of one
library is never why legacy fails.

The test builds, without committing anything, one python-iptables rule for every
(extension, options) shape tpctl's builder emits for a configuration that uses every feature,
in a worker process per family (libxtables serves one family per process). Run as a worker:
    python -m engine.iptables.legacy_selftest FAMILY  ->  exit 0, or exit 1 and the reason
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from functools import lru_cache

from engine.timeouts import bound


def _shapes(family: int) -> list:
    """One rule per distinct shape of the rules a do-everything configuration produces."""
    from engine import config as config_mod
    from engine.iptables.builder import FamilyInputs, build_family
    from engine.options import BY_FIELD

    server = "2001:2::53" if family == 6 else "198.18.0.53"
    rules = []
    for flags in ({"redirect_dns": "true", "iptables_logs": "true", "drop_invalid_packets": "true",
                   "exclude_inbound_ports": "22", "exclude_outbound_ports": "7001",
                   "exclude_inbound_ips": "198.18.9.0/24", "exclude_outbound_ips": "198.18.8.0/24",
                   "exclude_outbound_ports_for_uids": "tcp:7000-7002:0-10",
                   "vnet": "docker0:172.17.0.0/16"},
                  {"redirect_all_dns_traffic": "true", "redirect_inbound": "false"}):
        cfg = config_mod.build({name: BY_FIELD[name].parse(text) for name, text in flags.items()})
        plan = build_family(cfg, FamilyInputs(family, (server,)))
        rules += [rule for table in plan.tables for rule in table.rules]
    seen, shapes = set(), []
    for rule in rules:
        key = (rule.target, tuple(o.name for o in rule.target_options),
               tuple((m.name, tuple(o.name for o in m.options)) for m in rule.matches),
               rule.comment is not None)
        if key not in seen:
            seen.add(key)
            # a jump to one of our chains needs the chain in the kernel; its options are the test
            shapes.append(dataclasses.replace(rule, target="RETURN") if rule.target.startswith("TPCTL_") else rule)
    return shapes


def worker(family: int) -> int:
    try:
        from engine.iptables import iptc_loader
        from engine.iptables.backends import to_iptc

        iptc_loader.load()
    except ImportError as err:
        print(f"python-iptables is not importable: {err}", file=sys.stderr)
        return 1
    for rule in _shapes(family):
        try:
            to_iptc(rule, family)
        except Exception as err:  # python-iptables raises ValueError, XTablesError and others
            print(f"{_plain(err)} (in: {rule.save_line()})", file=sys.stderr)
            return 1
    return 0


@lru_cache(maxsize=1)
def _plain(err: Exception) -> str:
    """python-iptables words its errors with bytes reprs (b'udp': no such parameter b'sport'):
    people read udp: no such parameter sport."""
    return re.sub(r"""\bb(['"])(.*?)\1""", r"\2", str(err))


def python_iptables_problem() -> str | None:
    """None when python-iptables builds every rule shape for both families, else why not."""
    procs = {family: subprocess.Popen([sys.executable, "-m", "engine.iptables.legacy_selftest", str(family)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for family in (4, 6)}
    problems = []
    for family, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=bound(60))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            problems.append(f"IPv{family}: the self-test did not finish in {bound(60)} s")
            continue
        if proc.returncode != 0:
            lines = err.strip().splitlines()
            problems.append(f"IPv{family}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return "; ".join(problems) or None


if __name__ == "__main__":
    sys.exit(worker(int(sys.argv[1])))
