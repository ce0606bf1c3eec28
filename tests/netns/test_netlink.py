"""engine.netlink's read-only dumps against what iproute2 reports in a sandbox namespace
(links, addresses, tc bpf filters): status and reinstalls read these instead of pyroute2."""
from __future__ import annotations

import json

from engine import netlink
from sandbox.netns import APP_V4, APP_V6, in_netns
from tests.netns.conftest import install


def test_links_and_addresses_are_what_ip_reports(sandbox):
    shown = json.loads(sandbox.run(sandbox.app, ["ip", "-j", "address", "show"], check=True).stdout)
    with in_netns(sandbox.app):
        links = netlink.links()
        addresses = netlink.addresses()
    assert sorted((link["index"], link["name"], link["up"]) for link in links) == sorted(
        (x["ifindex"], x["ifname"], "UP" in x["flags"]) for x in shown)
    assert sorted(addresses) == sorted((x["ifindex"], a["local"]) for x in shown for a in x["addr_info"])
    assert any(a == APP_V4 for _i, a in addresses) and any(a == APP_V6 for _i, a in addresses)


def test_bpf_filters_are_what_tc_reports(sandbox):
    with in_netns(sandbox.app):
        index = next(link["index"] for link in netlink.links() if link["name"] == sandbox.app_if)
        assert netlink.bpf_filters(index, 0xFFFFFFF2) == []  # no clsact yet: nothing, not an error
    install(sandbox, "ebpf")
    for direction, parent in (("ingress", 0xFFFFFFF2), ("egress", 0xFFFFFFF3)):
        shown = json.loads(sandbox.run(sandbox.app, ["tc", "-j", "filter", "show", "dev", sandbox.app_if, direction],
                                       check=True).stdout)
        expected = [(x["pref"], x["options"]["bpf_name"], x["options"]["prog"]["id"]) for x in shown if "options" in x]
        with in_netns(sandbox.app):
            found = [(f["prio"], f["name"], f["prog_id"]) for f in netlink.bpf_filters(index, parent)]
        assert found == expected and len(found) == 1, (found, shown)
