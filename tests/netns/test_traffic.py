"""Real traffic through real namespaces, for every engine: where did each connection go?"""
from __future__ import annotations

import json
import os
import subprocess
import time

from sandbox.netns import APP_V4, APP_V6, SRV_V4, SRV_V6
from sandbox.scenario import PEERS, REAL_DNS_ANSWER
from sandbox.sidecar import DNS_MARKER_V4
from tests.netns.conftest import install, install_args


def test_outbound_goes_through_the_sidecar_which_recovers_the_original_destination(scene, sandbox, engine):
    install(sandbox, engine)
    reply = scene.outbound(SRV_V4, 9000)
    assert reply["reply"].startswith(f"hello from {SRV_V4}:9000"), reply
    assert reply["peername"] == f"{SRV_V4}:9000", "the app must see the address it connected to"
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]


def test_the_proxy_uid_is_never_redirected(scene, sandbox, engine):
    install(sandbox, engine)
    reply = scene.outbound(SRV_V4, 9000, uid=5678)
    assert reply["reply"].startswith(f"hello from {SRV_V4}:9000"), reply
    assert scene.connections("outbound") == []


def test_inbound_goes_to_the_inbound_port_and_reaches_the_app_from_the_passthrough_address(scene, sandbox, engine):
    install(sandbox, engine)
    reply = scene.inbound(APP_V4, 8080)
    assert reply["reply"].startswith(f"hello from {APP_V4}:8080 to 127.0.0.6:"), reply
    assert [c["original_dst"] for c in scene.connections("inbound")] == [f"{APP_V4}:8080"]


def test_excluded_ports_are_untouched(scene, sandbox, engine):
    install(sandbox, engine, "--exclude-outbound-ports", "9001", "--exclude-inbound-ports", "8081")
    assert scene.outbound(SRV_V4, 9001)["reply"].startswith(f"hello from {SRV_V4}:9001")
    assert scene.inbound(APP_V4, 8081)["reply"].startswith(f"hello from {APP_V4}:8081 to {SRV_V4}:")
    assert scene.connections("outbound") == [] and scene.connections("inbound") == []
    scene.outbound(SRV_V4, 9000)
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]


def test_excluded_ips_are_untouched(scene, sandbox, engine):
    install(sandbox, engine, "--exclude-outbound-ips", f"{SRV_V6}/128", "--exclude-inbound-ips", "198.18.0.0/30")
    assert scene.outbound(SRV_V6, 9000)["reply"].startswith(f"hello from {SRV_V6}:9000")
    assert scene.inbound(APP_V4, 8080)["reply"].startswith(f"hello from {APP_V4}:8080 to {SRV_V4}:")
    assert scene.connections("outbound") == [] and scene.connections("inbound") == []
    scene.outbound(SRV_V4, 9000)
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]


def test_excluded_ports_for_uids_apply_to_those_uids_only(scene, sandbox, engine):
    install(sandbox, engine, "--exclude-outbound-ports-for-uids", "tcp:9000:4242")
    assert scene.outbound(SRV_V4, 9000, uid=4242)["reply"].startswith(f"hello from {SRV_V4}:9000")
    assert scene.connections("outbound") == []
    scene.outbound(SRV_V4, 9000, uid=4243)
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]


def test_dns_to_resolv_conf_servers_is_answered_by_the_sidecar_from_the_server_address(scene, sandbox, engine):
    install(sandbox, engine, "--redirect-dns")
    answer = scene.dns(SRV_V4)
    assert answer == {"reply_from": f"{SRV_V4}:53", "answer": DNS_MARKER_V4}
    assert [r["qname"] for r in scene.connections("dns")] == ["demo.mesh"]


def test_dns_to_other_servers_is_left_alone_without_capture_all(scene, sandbox, engine):
    with open(sandbox.resolv_conf, "w") as handle:
        handle.write("nameserver 198.18.1.53\n")
    install(sandbox, engine, "--redirect-dns")
    assert scene.dns(SRV_V4) == {"reply_from": f"{SRV_V4}:53", "answer": REAL_DNS_ANSWER}
    assert scene.connections("dns") == []


def test_all_dns_is_captured_with_redirect_all_dns_traffic(scene, sandbox, engine):
    with open(sandbox.resolv_conf, "w") as handle:
        handle.write("nameserver 198.18.1.53\n")
    install(sandbox, engine, "--redirect-all-dns-traffic")
    assert scene.dns(SRV_V4) == {"reply_from": f"{SRV_V4}:53", "answer": DNS_MARKER_V4}


def test_ipv6_dualstack_redirects_both_directions(scene, sandbox, engine):
    install(sandbox, engine)
    reply = scene.outbound(SRV_V6, 9000)
    assert reply["reply"].startswith(f"hello from {SRV_V6}:9000"), reply
    reply = scene.inbound(APP_V6, 8080)
    assert reply["reply"].startswith(f"hello from {APP_V6}:8080 to ::6:"), reply
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V6}:9000"]
    assert [c["original_dst"] for c in scene.connections("inbound")] == [f"{APP_V6}:8080"]


def test_ipv4_mode_leaves_ipv6_alone(scene, sandbox, engine):
    install(sandbox, engine, "--ip-family-mode", "ipv4")
    assert scene.outbound(SRV_V6, 9000)["reply"].startswith(f"hello from {SRV_V6}:9000")
    assert scene.connections("outbound") == []


def test_app_to_localhost_is_untouched(scene, sandbox, engine):
    install(sandbox, engine)
    assert scene.outbound("127.0.0.1", 8080)["reply"].startswith("hello from 127.0.0.1:8080 to 127.0.0.1:")
    assert scene.connections("outbound") == []


def test_the_proxy_reaching_its_own_instance_ip_goes_to_the_inbound_port(scene, sandbox, engine):
    """As Kuma: the proxy's own connection to the instance address lands on its inbound port."""
    install(sandbox, engine)
    reply = scene.outbound(APP_V4, 8080, uid=5678)
    assert reply["reply"].startswith(f"hello from {APP_V4}:8080 to 127.0.0.6:"), reply
    assert [c["original_dst"] for c in scene.connections("inbound")] == [f"{APP_V4}:8080"]


def test_a_client_gone_before_a_busy_proxy_accepts_still_has_its_original_destination(sandbox, engine):
    """The proxy may accept after the app has sent and closed (a busy proxy, a short request):
    SO_ORIGINAL_DST must still answer, as conntrack does for iptables."""
    from sandbox.scenario import Scenario

    slow = Scenario(sandbox, sidecar_args=("--accept-delay", "1.5")).start()
    install(sandbox, engine)
    clients = [slow.hit(SRV_V4, 9000) for _ in range(2)]
    assert all(c.get("closed") for c in clients), clients
    deadline = time.monotonic() + 15
    while len(slow.connections("outbound")) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    seen = slow.connections("outbound")
    assert [c.get("original_dst", c.get("error")) for c in seen] == [f"{SRV_V4}:9000"] * 2, seen
    if engine == "ebpf":  # and the entry still goes when the proxy's socket closes, not only by LRU
        pinned = os.path.join(sandbox.bpffs, "tpctl", "map_tp_tuple_orig")
        while _entries(pinned) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _entries(pinned) == 0


def _entries(pinned_map: str) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", pinned_map],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return len(json.loads(out))


def test_include_ports_redirect_only_those_ports(scene, sandbox, engine):
    """Kuma's includePorts (config file keys; flags here too). eBPF has no include list: with
    --no-fallback it refuses naming the flag, without it falls back (tests/netns: fallbacks)."""
    args = ("--include-outbound-ports", "9000", "--include-inbound-ports", "8080")
    if engine == "ebpf":
        refused = sandbox.tpctl(*install_args(engine, sandbox, *args))
        assert refused.returncode == 3 and "--include-outbound-ports" in refused.stderr, refused.stderr
        return
    install(sandbox, engine, *args)
    assert scene.outbound(SRV_V4, 9001)["reply"].startswith(f"hello from {SRV_V4}:9001")
    assert scene.inbound(APP_V4, 8081)["reply"].startswith(f"hello from {APP_V4}:8081 to {SRV_V4}:")
    assert scene.connections("outbound") == [] and scene.connections("inbound") == []
    scene.outbound(SRV_V4, 9000)
    scene.inbound(APP_V4, 8080)
    assert [c["original_dst"] for c in scene.connections("outbound")] == [f"{SRV_V4}:9000"]
    assert [c["original_dst"] for c in scene.connections("inbound")] == [f"{APP_V4}:8080"]


DOCKER_DNS = "198.18.0.111"  # what the stand-in for Docker's embedded DNS answers


def test_with_dockers_embedded_dns_the_proxys_own_queries_still_reach_it(scene, sandbox, engine):
    """A Docker custom network: resolv.conf says 127.0.0.11, and Docker's DOCKER_OUTPUT chain
    DNATs 127.0.0.11:53 to where dockerd answers (here a DNS server on 127.0.0.11:5353). The
    app's queries must reach the sidecar's DNS proxy, kuma-dp's own must still reach Docker's
    (kumactl: kuma-dp's DNS jumps to DOCKER_OUTPUT instead of RETURN)."""
    backend = "legacy" if engine == "iptables-legacy" else "nft"
    docker = ("*nat\n:DOCKER_OUTPUT - [0:0]\n-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT\n"
              "-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp --dport 53 -j DNAT --to-destination 127.0.0.11:5353\nCOMMIT\n")
    sandbox.run(sandbox.app, [f"iptables-{backend}-restore", "--noflush"], input=docker, check=True)
    sandbox.spawn(sandbox.app, sandbox.python(PEERS, "dns-server", "--port", "5353", "--answer", DOCKER_DNS))
    sandbox.wait_for_port(sandbox.app, 5353, proto="udp")
    with open(sandbox.resolv_conf, "w") as handle:
        handle.write("nameserver 127.0.0.11\n")
    assert scene.dns("127.0.0.11", uid=5678)["answer"] == DOCKER_DNS  # before: Docker's DNS answers
    result = install(sandbox, engine, "--redirect-dns")
    if engine.startswith("iptables"):
        assert "-j DOCKER_OUTPUT" in sandbox.run(sandbox.app, [f"iptables-{backend}-save", "-t", "nat"]).stdout
    assert scene.dns("127.0.0.11") == {"reply_from": "127.0.0.11:53", "answer": DNS_MARKER_V4}, result.stderr
    assert scene.dns("127.0.0.11", uid=5678)["answer"] == DOCKER_DNS
