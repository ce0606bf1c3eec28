"""Real traffic through the eBPF engine in throwaway namespaces (root)."""
import json
import os

import pytest
from ebpf_lab import root_only, sh

from ebpf import engine
from ebpf.engine import EbpfSettings
from ebpf.probe import bcc_compiles_accel
from sandbox.netns import APP_V4, APP_V6, PROXY_UID, SRV_V4, SRV_V6, in_netns
from sandbox.scenario import REAL_DNS_ANSWER
from sandbox.sidecar import DNS_MARKER_V4

pytestmark = root_only


def settings(sb, **kw):
    base = dict(proxy_uid=PROXY_UID, inbound_port=15006, outbound_port=15001, dns_port=15053,
                redirect_inbound=True, redirect_dns="servers",
                dns_servers=(SRV_V4, SRV_V6),
                exclude_inbound_ports=(2222,), exclude_outbound_ports=(9090,),
                exclude_inbound_cidrs=(), exclude_outbound_cidrs=("198.18.1.0/24",),
                exclude_outbound_ports_for_uids=(("tcp", 7070, 7070, 1234, 1234),),
                ipv6=True, instance_ips=(APP_V4, APP_V6), tc_iface=sb.app_if,
                cgroup_path=sb.cgroup, bpffs_path=sb.bpffs,
                # the whole contract includes sk_msg wherever this BCC can compile it
                accel=bcc_compiles_accel())
    base.update(kw)
    return EbpfSettings(**base)


def through_sidecar(scene, listener):
    """The original destinations the sidecar read on `listener` since the last look."""
    seen = [c.get("original_dst", c.get("error")) for c in scene.connections(listener)]
    scene.clear()
    return seen


def kernel_leftovers(sb):
    """What of ours the kernel still shows for the cgroup, the interface and the bpffs."""
    cg = sh("bpftool", "cgroup", "show", sb.cgroup).stdout
    with in_netns(sb.app):
        ing = sh("tc", "filter", "show", "dev", sb.app_if, "ingress", check=False).stdout
        eg = sh("tc", "filter", "show", "dev", sb.app_if, "egress", check=False).stdout
        qd = sh("tc", "qdisc", "show", "dev", sb.app_if).stdout
    return {"cgroup": cg.strip(), "tc": (ing + eg).strip(), "clsact": "clsact" in qd,
            # maps.debug / progs.debug are the kernel's own bpf_preload iterators
            "bpffs": sorted(set(os.listdir(sb.bpffs)) - {"maps.debug", "progs.debug"})}


def test_full_contract(sandbox, scene):
    with in_netns(sandbox.app):
        record = engine.apply(engine.plan(settings(sandbox)))
    assert not record["skipped"]
    json.dumps(record)

    # outbound v4: redirected, original destination recovered, app sees the real peer
    out = scene.outbound(SRV_V4, 8080, sockopts=True)
    assert out.get("reply", "").startswith(f"hello from {SRV_V4}:8080"), out
    assert through_sidecar(scene, "outbound") == [f"{SRV_V4}:8080"]
    assert out["peername"] == f"{SRV_V4}:8080"
    assert out["rcvbuf"] > 0 and out["tcp_info_len"] > 0
    # outbound v6
    out = scene.outbound(SRV_V6, 8080)
    assert out.get("reply", "").startswith(f"hello from {SRV_V6}:8080"), out
    assert through_sidecar(scene, "outbound") == [f"{SRV_V6}:8080"]
    assert out["peername"] == f"{SRV_V6}:8080"
    # proxy uid is not redirected
    out = scene.outbound(SRV_V4, 8080, uid=PROXY_UID)
    assert out.get("reply", "").startswith(f"hello from {SRV_V4}:8080"), out
    assert through_sidecar(scene, "outbound") == []
    # excluded port, excluded ports-for-uids; uid 1000 on the same port is redirected
    assert scene.outbound(SRV_V4, 9090).get("reply", "").startswith(f"hello from {SRV_V4}:9090")
    assert scene.outbound(SRV_V4, 7070, uid=1234).get("reply", "").startswith(f"hello from {SRV_V4}:7070")
    assert through_sidecar(scene, "outbound") == []
    assert scene.outbound(SRV_V4, 7070, uid=1000).get("reply", "").startswith(f"hello from {SRV_V4}:7070")
    assert through_sidecar(scene, "outbound") == [f"{SRV_V4}:7070"]
    # app -> 127.0.0.1 untouched: reaches the local app directly, not the sidecar
    assert scene.outbound("127.0.0.1", 8080).get("reply", "").startswith("hello from 127.0.0.1:8080 to 127.0.0.1:")
    assert through_sidecar(scene, "outbound") == []

    # DNS: to a listed server -> local DNS proxy, reply source = original server
    out = scene.dns(SRV_V4, "q4.mesh")
    assert out == {"reply_from": f"{SRV_V4}:53", "answer": DNS_MARKER_V4}, out
    out = scene.dns(SRV_V6, "q6.mesh")
    assert out == {"reply_from": f"{SRV_V6}:53", "answer": DNS_MARKER_V4}, out
    out = scene.dns(SRV_V4, "qc.mesh", connect=True)
    assert out == {"reply_from": f"{SRV_V4}:53", "answer": DNS_MARKER_V4}, out
    assert [r.get("qname") for r in scene.connections("dns")] == ["q4.mesh", "q6.mesh", "qc.mesh"]
    out = scene.dns(SRV_V4, "px.mesh", uid=PROXY_UID)
    assert out == {"reply_from": f"{SRV_V4}:53", "answer": REAL_DNS_ANSWER}, out

    # inbound via tc: srv -> app:8080 lands on 15006, original dst recovered
    out = scene.inbound(APP_V4, 8080)
    assert out.get("reply", "").startswith(f"hello from {APP_V4}:8080 to 127.0.0.6:"), out
    out = scene.inbound(APP_V6, 8080)
    assert out.get("reply", "").startswith(f"hello from {APP_V6}:8080 to ::6:"), out
    assert out["peername"] == f"{APP_V6}:8080"
    assert through_sidecar(scene, "inbound") == [f"{APP_V4}:8080", f"{APP_V6}:8080"]
    # excluded inbound port goes straight to the app
    assert scene.inbound(APP_V4, 2222).get("reply", "").startswith(f"hello from {APP_V4}:2222 to {SRV_V4}:")
    assert through_sidecar(scene, "inbound") == []

    with in_netns(sandbox.app):  # tc filters are read in the current network namespace
        st = engine.status(sandbox.bpffs)
    assert st["installed"] and st["cgroup_path"] == os.path.realpath(sandbox.cgroup)
    assert all(p["attached"] for p in st["programs"].values() if p["attached"] is not None), st
    assert st["programs"]["tp_tc_ingress"]["attached"] and st["programs"]["tp_sockops"]["attached"]
    assert st["maps"]["tp_settings"][0]["outbound_port"] == 15001
    assert "198.18.1.0/24" in st["maps"]["tp_excl_out_v4"]

    with in_netns(sandbox.app):
        removed = engine.uninstall(sandbox.bpffs, record, sandbox.cgroup)
    assert removed
    left = kernel_leftovers(sandbox)
    assert left == {"cgroup": "", "tc": "", "clsact": False, "bpffs": []}, left
    # traffic flows directly again
    assert scene.outbound(SRV_V4, 8080).get("reply", "").startswith(f"hello from {SRV_V4}:8080")
    assert through_sidecar(scene, "outbound") == []


def test_uninstall_from_pins_alone_and_accel_off(sandbox, scene):
    with in_netns(sandbox.app):
        engine.apply(engine.plan(settings(sandbox, accel=False, redirect_dns="off")))
    out = scene.outbound(SRV_V4, 8080)
    assert out.get("reply", "").startswith(f"hello from {SRV_V4}:8080"), out
    assert scene.dns(SRV_V4) == {"reply_from": f"{SRV_V4}:53", "answer": REAL_DNS_ANSWER}
    with in_netns(sandbox.app):
        st = engine.status(sandbox.bpffs)
    assert "tp_sk_msg" not in st["programs"] and st["maps"]["tp_settings"][0]["accel"] == 0
    with in_netns(sandbox.app):
        engine.uninstall(sandbox.bpffs, None, None)
    assert kernel_leftovers(sandbox) == {"cgroup": "", "tc": "", "clsact": False, "bpffs": []}
    assert through_sidecar(scene, "outbound") == [f"{SRV_V4}:8080"]


@pytest.mark.parametrize("step", ["compile", "pin:map_tp_settings", "attach:tp_sockops",
                                  "tc:filter:tp_tc_egress", "meta"])
def test_rollback_on_injected_fault(sandbox, monkeypatch, step):
    monkeypatch.setenv("TPCTL_FAULT_INJECT", step)
    with in_netns(sandbox.app), pytest.raises(engine.EbpfApplyError) as err:
        engine.apply(engine.plan(settings(sandbox)))
    assert step in str(err.value) and err.value.rollback_notes
    left = kernel_leftovers(sandbox)
    assert left == {"cgroup": "", "tc": "", "clsact": False, "bpffs": []}, left
