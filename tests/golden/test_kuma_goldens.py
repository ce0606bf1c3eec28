"""Our rendered rules equal kumactl's real outputs (tests/golden/kumactl/, copied from ../shared/peer/kuma).

Kuma's names are renamed to ours first (KUMA_MESH_ -> TPCTL_, kuma/mesh/transparent/proxy/ ->
tpctl/); the one intended difference in the text (no apostrophe in comments, see builder.py and
README) is applied to Kuma's side explicitly, so any other difference fails.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from engine import config as config_module
from engine.iptables.builder import FamilyInputs, build_family
from tests.support.kumactl import load_golden, rule_set, semantic_rules

HERE = Path(__file__).parent
PEER = Path(os.environ.get("TPCTL_PEER_DIR", HERE / "kumactl"))  # copies of ../shared/peer/kuma
KUMA_DP = {"kuma_dp_user": config_module.v.ProxyUser(5678, "kuma-dp")}

MULTIPLE_FLAGS = dict(
    redirect_all_dns_traffic=True,
    vnet=config_module.v.vnet_list(["docker0:172.17.0.0/16", "br+:172.18.0.0/16", "iface:::1/64"]),
    exclude_outbound_ports_for_uids=config_module.v.ports_for_uids_list(["53,3000-5000:106-108"]),
    exclude_outbound_ips=config_module.v.network_list(["10.0.0.1,192.168.0.0/24,fe80::1", "fd00::/8"]),
    exclude_outbound_ports=(1, 22, 333),
    exclude_inbound_ports=(4444, 55555),
    exclude_inbound_ips=config_module.v.network_list(["192.168.0.1,172.32.16.8/16,fe80::/10",
                                                      "a81b:a033:6399:73c7:72b6:aa8c:6f22:7098"]),
)

CASES = {
    "default.iptables.golden": (4, {}, []),
    "default.ip6tables.golden": (6, {}, []),
    "with-multiple-flags.iptables.golden": (4, MULTIPLE_FLAGS, []),
    "with-multiple-flags.ip6tables.golden": (6, MULTIPLE_FLAGS, []),
    "with-multiple-config-flags.iptables.golden":
        (4, {}, ["config-1.yaml", "config-2.yaml", "config-stdin.yaml"]),
}


def render(family: int, explicit: dict, config_files: list[str]) -> str:
    config = config_module.build({**KUMA_DP, **explicit}, [str(HERE / "configs" / f) for f in config_files])
    return build_family(config, FamilyInputs(family, loopback="ifPlaceholder")).save_view()


def ours(kuma_text: str) -> str:
    text = kuma_text.replace("KUMA_MESH_", "TPCTL_").replace("kuma/mesh/transparent/proxy/", "tpctl/")
    return text.replace("the envoy\\'s outbound", "the envoy outbound")


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_rules_equal_kumactl(name):
    family, explicit, files = CASES[name]
    assert render(family, explicit, files) == ours(load_golden(PEER / name))


def test_dry_run_equals_kumactl_overrides_golden():
    """The dry-run golden is restore input without comments: compared rule by rule, per chain."""
    config = config_module.build({
        "ip_family_mode": "ipv4", "kuma_dp_user": config_module.v.proxy_user("root"),
        "redirect_outbound_port": 12345, "redirect_inbound_port": 12346,
        "exclude_outbound_ports": (2000, 2001), "exclude_inbound_ports": (1000, 1001)})
    plan = build_family(config, FamilyInputs(4, loopback="ifPlaceholder"))
    golden = ours(load_golden(PEER / "dry-run-overrides.restore.golden"))
    assert golden.startswith("### IPv4 ###")
    assert semantic_rules(plan.restore_text()) == semantic_rules(golden)
    assert rule_set(plan.restore_text(), "-N") == rule_set(golden, "-N")


def test_golden_loader_rejects_a_changed_rule():
    """The comparison is not vacuous: one changed port makes it fail."""
    golden = ours(load_golden(PEER / "default.iptables.golden"))
    assert render(4, {"redirect_outbound_port": 15002}, []) != golden
    changed = re.sub("15006", "15007", golden)
    assert semantic_rules(changed) != semantic_rules(golden)
