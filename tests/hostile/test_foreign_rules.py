"""The iptables engine deletes only what it added (issue "Uninstall destroys only what it can
prove"): a foreign rule that lands in a table while install applies, a foreign rule identical to
one of tpctl's untagged ones, a state record naming a foreign rule, an IPv4-only install that
replaces a dualstack one, and the nf_tables base chains iptables-nft creates beside foreign
rules. Every case compares the namespace's tables (both backends, both families) and
`nft list ruleset` byte for byte before install and after uninstall."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

from engine.iptables import live, ownership
from sandbox.netns import Sandbox
from tests.netns.conftest import add_foreign_rules, install, install_args, snapshot

RUNS = 30  # seconds: the bound of every tpctl run here

# -- pure: what a record may claim, and which copy goes ------------------------------------------

SAVED_NAT = f"""*nat
:OUTPUT ACCEPT [0:0]
:TPCTL_OUTBOUND - [0:0]
-A OUTPUT {'-d 198.18.9.9/32 -j RETURN'}
-A OUTPUT -p tcp -m tcp --dport 7778 -j RETURN
-A OUTPUT {'-d 198.18.9.9/32 -j RETURN'}
-A OUTPUT -p tcp -j TPCTL_OUTBOUND
-A TPCTL_OUTBOUND -j RETURN
COMMIT
"""
TWIN = ("nat", "OUTPUT", "-d 198.18.9.9/32 -j RETURN")


def test_a_record_claims_untagged_rules_only_of_tpctls_shape_and_only_without_comments():
    foreign = ("filter", "INPUT", "-p tcp -m tcp --dport 2223 -j ACCEPT")
    look_alike = ("nat", "PREROUTING", "-p tcp -m tcp --dport 2222 -j REDIRECT --to-ports 22")
    tagged = ("nat", "OUTPUT", "-p tcp -j TPCTL_OUTBOUND")
    claim = ownership.claim(4, [TWIN, TWIN, foreign, look_alike, tagged], [TWIN], comments=False)
    assert claim.copies == {TWIN: 2} and claim.inserted == {TWIN} and claim.refused == (foreign, look_alike)
    assert ownership.claim(4, [TWIN], comments=True).refused == (TWIN,)  # it rendered comments: not its rule
    record = {"rules": {"4": [list(TWIN), "junk"], "6": [list(foreign)]}, "comments": False}
    assert ownership.claim_of(record, 4).copies == {TWIN: 1} and ownership.claim_of(record, 6).refused == (foreign,)


def test_only_the_copies_tpctl_placed_are_its_own_and_a_later_one_goes_by_position():
    tables = live.parse_save(SAVED_NAT)
    inserted = live.find_owned(tables, live.Claim({TWIN: 1}, frozenset({TWIN})))
    assert [(c, i) for _t, c, i, _s in inserted.rules] == [("OUTPUT", 1), ("OUTPUT", 4)]
    assert "-D OUTPUT -d 198.18.9.9/32 -j RETURN" in live.removal_script(inserted)
    appended = live.find_owned(tables, live.Claim({TWIN: 1}))
    assert [(c, i) for _t, c, i, _s in appended.rules] == [("OUTPUT", 3), ("OUTPUT", 4)]
    assert live.removal_script(appended).startswith("*nat\n-D OUTPUT 3\n-D OUTPUT -p tcp -j TPCTL_OUTBOUND\n")
    assert [(c, i) for _t, c, i, _s in live.find_owned(tables).rules] == [("OUTPUT", 4)]


# -- in throwaway namespaces ----------------------------------------------------------------------


def _ruleset(sandbox: Sandbox) -> str:
    return sandbox.run(sandbox.app, ["nft", "list", "ruleset"], timeout=RUNS).stdout


def _tables(sandbox: Sandbox) -> tuple[dict[str, str], str]:
    return snapshot(sandbox), _ruleset(sandbox)


def _assert_as_before(sandbox: Sandbox, before: tuple[dict[str, str], str]) -> None:
    tables, ruleset = _tables(sandbox)
    for name in sorted(set(tables) | set(before[0])):
        assert tables.get(name) == before[0].get(name), name
    assert ruleset == before[1]


def _uninstall(sandbox: Sandbox) -> subprocess.CompletedProcess:
    result = sandbox.tpctl("uninstall", timeout=RUNS)
    assert result.returncode == 0, result.stderr
    return result


def _executable(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


def _restore_that_races(sandbox: Sandbox) -> str:
    """An iptables-restore for --iptables-executables that, the first time it runs, lets another
    tool add a rule to nat OUTPUT just before the real iptables-nft-restore applies tpctl's swap:
    the window between the save before and the save after an install step."""
    marker = os.path.join(sandbox.tmp, "raced")
    real = subprocess.run(["sh", "-c", "command -v iptables-nft-restore"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return _executable(os.path.join(sandbox.tmp, "racing-restore"), f"""#!/bin/sh
if [ ! -e {marker} ]; then
    : > {marker}
    iptables-nft -t nat -A OUTPUT -d 198.18.77.77/32 -p tcp -j RETURN
fi
exec {real} "$@"
""")


def test_a_rule_another_tool_adds_while_install_applies_stays(sandbox):
    add_foreign_rules(sandbox)
    racing = _restore_that_races(sandbox)
    install(sandbox, "iptables-nft", "--ip-family-mode", "ipv4", "--iptables-executables",
            f"iptables-restore:{racing}")
    assert os.path.exists(os.path.join(sandbox.tmp, "raced"))
    # the foreign rule came in during the install: it belongs to the "before" picture
    saved = sandbox.run(sandbox.app, ["iptables-nft-save", "-t", "nat"]).stdout
    assert "-A OUTPUT -d 198.18.77.77/32 -p tcp -j RETURN" in saved
    record = json.load(open(os.path.join(sandbox.state_dir, "state.json")))["iptables"]
    assert not any("198.18.77.77" in spec for _t, _c, spec in record["rules"]["4"])
    _uninstall(sandbox)
    saved = sandbox.run(sandbox.app, ["iptables-nft-save", "-t", "nat"]).stdout
    assert "-A OUTPUT -d 198.18.77.77/32 -p tcp -j RETURN" in saved
    assert "TPCTL" not in saved


# tpctl's untagged lines with --disable-comments: one inserted at the top of nat OUTPUT, one
# appended to raw OUTPUT (the DNS conntrack zone of the proxy's own queries)
EXCLUDED = "-d 198.18.9.9/32 -j RETURN"
ZONE = "-p udp -m udp --dport 53 -m owner --uid-owner 5678 -j CT --zone 1"


def _add_twins_of_tpctls_rules(sandbox: Sandbox, backend: str) -> None:
    """Foreign rules identical to two of tpctl's, each with another foreign rule after it, so a
    deletion of the wrong copy shows as a change of order."""
    script = (f"*nat\n-A OUTPUT -p tcp --dport 7778 -j RETURN\n-A OUTPUT {EXCLUDED}\nCOMMIT\n"
              f"*raw\n-A OUTPUT {ZONE}\n-A OUTPUT -p udp --dport 5354 -j NOTRACK\nCOMMIT\n")
    sandbox.run(sandbox.app, [f"iptables-{backend}-restore", "--noflush"], input=script, check=True)


def _forge_record(sandbox: Sandbox, *lines: list[str]) -> None:
    path = os.path.join(sandbox.state_dir, "state.json")
    whole = json.load(open(path))
    whole["iptables"]["rules"]["4"] += [list(line) for line in lines]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(whole, handle)


def test_with_comments_disabled_uninstall_deletes_only_its_own_copies_and_no_forged_record(sandbox):
    add_foreign_rules(sandbox)
    _add_twins_of_tpctls_rules(sandbox, "nft")
    before = _tables(sandbox)
    flags = ["--ip-family-mode", "ipv4", "--disable-comments", "--redirect-dns", "--exclude-outbound-ips", "198.18.9.9"]
    install(sandbox, "iptables-nft", *flags, "--redirect-outbound-port", "15002")
    install(sandbox, "iptables-nft", *flags)  # replaces the first one's copies, not the twins
    saved = sandbox.run(sandbox.app, ["iptables-nft-save"]).stdout
    assert saved.count(f"-A OUTPUT {EXCLUDED}") == 2 and saved.count(f"-A OUTPUT {ZONE}") == 2
    # a record naming foreign rules that carry no tpctl tag and that tpctl never rendered
    forged = [["filter", "INPUT", "-p tcp -m tcp --dport 2223 -j ACCEPT"],
              ["nat", "PREROUTING", "-p tcp -m tcp --dport 2222 -j REDIRECT --to-ports 22"]]
    _forge_record(sandbox, *forged)
    result = _uninstall(sandbox)
    assert "--dport 2223 -j ACCEPT" in result.stderr and "left alone" in result.stderr
    _assert_as_before(sandbox, before)


def test_an_ipv4_only_install_replacing_a_dualstack_one_takes_its_ipv6_rules_away(sandbox):
    add_foreign_rules(sandbox)
    before = _tables(sandbox)
    install(sandbox, "iptables-legacy")
    assert "TPCTL_OUTBOUND" in sandbox.run(sandbox.app, ["ip6tables-legacy-save"]).stdout
    install(sandbox, "iptables-legacy", "--ip-family-mode", "ipv4")
    assert "TPCTL" not in sandbox.run(sandbox.app, ["ip6tables-legacy-save"]).stdout
    _uninstall(sandbox)
    _assert_as_before(sandbox, before)
    # both at once (the other applier, cheaper): the state lock orders them, and the IPv6 tables
    # follow the one that won
    env = {**os.environ, "TPCTL_STATE_DIR": sandbox.state_dir, "TPCTL_PERSIST_ROOT": sandbox.persist_root}
    both = [subprocess.Popen(sandbox.command(sandbox.app, [sys.executable, "-m", "engine.cli",
                                                           *install_args("iptables-legacy-restore", sandbox, *extra)]),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for extra in ((), ("--ip-family-mode", "ipv4"))]
    assert [p.wait(timeout=RUNS) for p in both] == [0, 0], [p.stderr.read() for p in both if p.stderr]
    won = json.load(open(os.path.join(sandbox.state_dir, "state.json")))["config"]["ip_family_mode"]
    in_v6 = "TPCTL" in sandbox.run(sandbox.app, ["ip6tables-legacy-save"]).stdout
    assert in_v6 == (won != "ipv4"), won
    _uninstall(sandbox)
    _assert_as_before(sandbox, before)


def _add_output_only_tables(sandbox: Sandbox) -> tuple[dict[str, str], str]:
    """Another owner's nat and raw tables with an OUTPUT chain only: iptables-nft-save prints a
    PREROUTING chain for them that nf_tables does not have, until our rules create it."""
    script = ("*raw\n-A OUTPUT -p udp --dport 5353 -j NOTRACK\nCOMMIT\n"
              "*nat\n-A OUTPUT -p tcp --dport 7777 -j RETURN\nCOMMIT\n")
    sandbox.run(sandbox.app, ["iptables-nft-restore", "--noflush"], input=script, check=True)
    before = _tables(sandbox)
    assert "chain PREROUTING" not in before[1]
    return before


def test_an_install_killed_half_way_then_uninstalled_leaves_no_base_chain_beside_foreign_rules(sandbox):
    before = _add_output_only_tables(sandbox)
    # SIGKILL to tpctl right after its first table (raw) is in: nothing of tpctl runs after it
    real = subprocess.run(["sh", "-c", "command -v iptables-nft-restore"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killer = _executable(os.path.join(sandbox.tmp, "restore-then-kill"),
                         f'#!/bin/sh\n{real} "$@"\nstatus=$?\nkill -9 $PPID\nexit $status\n')
    result = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--redirect-all-dns-traffic", "--iptables-logs",
                                         "--ip-family-mode", "ipv4", "--iptables-executables",
                                         f"iptables-restore:{killer}"), timeout=RUNS)
    assert result.returncode == -9 or result.returncode == 137, (result.returncode, result.stderr)
    assert "chain PREROUTING" in _ruleset(sandbox)
    _uninstall(sandbox)
    _assert_as_before(sandbox, before)


def test_iptables_nft_leaves_no_base_chain_of_its_own_beside_foreign_rules(sandbox):
    before = _add_output_only_tables(sandbox)
    install(sandbox, "iptables-nft", "--ip-family-mode", "ipv4", "--redirect-dns", "--redirect-inbound")
    _uninstall(sandbox)
    _assert_as_before(sandbox, before)


# every tool that changes netfilter state, by the name tpctl finds it under on PATH
CHANGING = ("iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore", "ip6tables-legacy-restore",
            "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy", "nft")


def _logging_path(sandbox: Sandbox) -> tuple[str, str]:
    """A PATH whose netfilter tools log their arguments before running the real ones."""
    wrappers = os.path.join(sandbox.tmp, "bin")
    os.mkdir(wrappers)
    log = os.path.join(sandbox.tmp, "calls.log")
    for name in CHANGING:
        real = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
        if real:
            _executable(os.path.join(wrappers, name), f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {real} "$@"\n')
    nft = shutil.which("nft")
    if nft:  # tpctl sends nft its commands on stdin: the script is what says whether it changes anything
        _executable(os.path.join(wrappers, "nft"),
                    f'#!/bin/sh\ncase " $* " in *" -f /dev/stdin "*)\n  script=$(cat)\n'
                    f'  printf "nft %s <<%s>>\\n" "$*" "$(printf %s "$script" | tr "\\n" ";")" >> {log}\n'
                    f'  printf "%s\\n" "$script" | {nft} "$@"; exit $? ;;\nesac\n'
                    f'echo "nft $*" >> {log}\nexec {nft} "$@"\n')
    return f"{wrappers}:{os.environ['PATH']}", log


def _read_only_nft(call: str) -> bool:
    """An nft call whose every command lists: argv words, a script, or JSON commands on stdin."""
    args, _, script = call.partition(" <<")
    if not script:
        return " list " in f"{args} "
    script = script.removesuffix(">>").strip()
    if script.startswith("{"):
        return all(set(c) == {"list"} for c in json.loads(script).get("nftables", []))
    commands = [c.strip() for c in script.split(";") if c.strip()]
    return bool(commands) and all(c.split()[0] == "list" for c in commands)


def _changing_calls(log: str) -> list[str]:
    if not os.path.exists(log):
        return []
    calls = open(log, encoding="utf-8").read().splitlines()
    return [c for c in calls if not (c.startswith("nft ") and _read_only_nft(c))]


def test_dry_runs_of_install_and_uninstall_run_nothing_that_changes_the_tables(sandbox):
    add_foreign_rules(sandbox)
    path, log = _logging_path(sandbox)
    env = {"PATH": path}
    before = _tables(sandbox)
    dry = sandbox.tpctl(*install_args("iptables-legacy", sandbox, "--dry-run"), env=env, timeout=RUNS)
    assert dry.returncode == 0, dry.stderr
    assert _changing_calls(log) == []
    assert _tables(sandbox) == before and not os.path.exists(sandbox.state_dir)
    for engine in ("iptables-nft", "iptables-legacy", "iptables-legacy-restore"):
        install(sandbox, engine, "--disable-comments", "--redirect-dns")
        during = _tables(sandbox)
        open(log, "w").close()
        for args in (install_args(engine, sandbox, "--dry-run", "--redirect-all-dns-traffic"),
                     ["uninstall", "--dry-run"]):
            result = sandbox.tpctl(*args, env=env, timeout=RUNS)
            assert result.returncode == 0, result.stderr
            assert _changing_calls(log) == [], (engine, args)
            assert _tables(sandbox) == during
        _uninstall(sandbox)
        _assert_as_before(sandbox, before)
