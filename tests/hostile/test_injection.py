"""The injections of issue 22 against the real tools, in a throwaway namespace (root): a zone id
carrying iptables-restore lines (a REDIRECT in nat OUTPUT; a COMMIT and an untagged DROP in
filter INPUT), a zone id breaking out of an nft comment, a trailing newline in an interface
name. Each is refused with exit 2 naming the flag, and the namespace's tables and nft ruleset
are byte for byte as before. Odd but valid values render plans that iptables-restore --test and
nft --check accept in the same namespace. The pure side: test_typed_values.py."""
from __future__ import annotations

import os

from engine import config as config_module
from engine import registry
from engine import values as v
from engine.contract import Choice
from tests.hostile.test_typed_values import host
from tests.netns.conftest import install_args, snapshot

MARK = "9977"  # a port no real rule uses: what each injection would have added, if it got in
# Each value closes the line tpctl's renderer had begun and ends in a line that absorbs the rest
# of it ("/128 -m comment ... -j RETURN"), so the tools took the whole script before the fix (the
# DROP stayed after uninstall: untagged, it is not ours).
INJECTIONS = [
    ("iptables-nft", "--exclude-outbound-ips",
     f"fe80::1%1\n-A OUTPUT -p tcp -j REDIRECT --to-ports {MARK}\n-A TPCTL_OUTBOUND -d ::2"),
    ("iptables-nft", "--exclude-outbound-ips",
     f"fe80::1%1\nCOMMIT\n*filter\n-I INPUT 1 -p tcp --dport {MARK} -j DROP\nCOMMIT\n*nat\n-A TPCTL_OUTBOUND -d ::2"),
    ("nftables", "--vnet", f'd0:fd00::1%";tcp dport {MARK} drop#/64'),
]
ODD_BUT_VALID = {
    "vnet": v.vnet_list(["a@b.c-_d+:2001:2:0:1::5/64", "x" * 15 + ":198.18.7.9/24", "br.0:198.19.0.0/16"]),
    "exclude_outbound_ips": v.network_list("::ffff:198.18.0.1,2001:2::/48,198.18.0.0/15,198.18.1.1,0.0.0.0/0"),
    "exclude_inbound_ips": v.network_list("2001:2::1/128,198.19.255.255"),
    "exclude_outbound_ports_for_uids": v.ports_for_uids_list("tcp,udp:1-65535:4294967294;udp:53:0;*:22,80-90:7-9"),
    "exclude_outbound_ports": v.port_list("65535,1"),
    "exclude_inbound_ports": v.port_list("22"),
    "kuma_dp_user": v.proxy_user("0"),  # a name from the host's passwd in the comments
    "redirect_dns": True, "iptables_logs": True, "drop_invalid_packets": True,
}


def ruleset(sandbox) -> str:
    return sandbox.run(sandbox.app, ["nft", "list", "ruleset"], timeout=30, check=True).stdout


def test_the_issue_injections_exit_2_and_the_namespace_is_unchanged(sandbox):
    before, nft_before = snapshot(sandbox), ruleset(sandbox)
    for engine, flag, value in INJECTIONS:
        result = sandbox.tpctl(*install_args(engine, sandbox, flag, value))
        said = result.stdout + result.stderr
        assert result.returncode == 2 and flag in said and "zone id" in said, (engine, flag, result.returncode, said)
        assert "Traceback" not in said
    result = sandbox.tpctl(*install_args("iptables-nft", sandbox, "--ebpf-enabled", "--ebpf-tc-attach-iface",
                                         f"{sandbox.app_if}\n"))
    assert result.returncode == 2 and "--ebpf-tc-attach-iface" in result.stderr, result.stderr
    assert snapshot(sandbox) == before and ruleset(sandbox) == nft_before
    assert MARK not in ruleset(sandbox)
    assert not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


def test_odd_but_valid_values_render_plans_the_real_tools_accept(sandbox):
    config = config_module.build({**ODD_BUT_VALID, "nftables_enabled": True})
    nftables = registry.get("nftables")
    iptables = registry.get("iptables")
    assert nftables and iptables
    script = nftables.plan(config, host(), Choice("nftables", None, (4, 6), ())).render()
    checked = sandbox.run(sandbox.app, ["nft", "--check", "-f", "-"], input=script, timeout=60)
    assert checked.returncode == 0, checked.stderr
    plan = iptables.plan(config, host(), Choice("iptables", "nft", (4, 6), (), (), "restore"))
    for family in plan.families:
        text = family.restore_text()
        for backend in ("nft", "legacy"):
            tool = f"{'ip6' if family.family == 6 else 'ip'}tables-{backend}-restore"
            tested = sandbox.run(sandbox.app, [tool, "--test", "--noflush"], input=text, timeout=60)
            assert tested.returncode == 0, (tool, tested.stderr, text)
    assert 'iifname "a@b.c-_d*"' in script and "-i a@b.c-_d+ " in plan.render()
    assert ruleset(sandbox).count("table") == 0  # --check and --test changed nothing
