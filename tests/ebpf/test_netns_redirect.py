"""Real traffic through the eBPF engine in throwaway namespaces (root)."""
import json
import os

import pytest

from ebpf_lab import PROXY_UID, in_netns, root_only, sh

from ebpf import engine
from ebpf.engine import EbpfSettings
from ebpf.probe import bcc_compiles_accel

pytestmark = root_only


def settings(lab, **kw):
    base = dict(proxy_uid=PROXY_UID, inbound_port=15006, outbound_port=15001, dns_port=15053,
                redirect_inbound=True, redirect_dns="servers",
                dns_servers=("198.18.0.2", "2001:2::2"),
                exclude_inbound_ports=(2222,), exclude_outbound_ports=(9090,),
                exclude_inbound_cidrs=(), exclude_outbound_cidrs=("198.18.1.0/24",),
                exclude_outbound_ports_for_uids=(("tcp", 7070, 7070, 1234, 1234),),
                ipv6=True, instance_ips=("198.18.0.1", "2001:2::1"), tc_iface=lab.iface,
                cgroup_path=lab.cg, bpffs_path=lab.bpffs,
                # the whole contract includes sk_msg wherever this BCC can compile it
                accel=bcc_compiles_accel())
    base.update(kw)
    return EbpfSettings(**base)


def start_world(lab):
    lab.start(lab.srv, "echo", "srv", "0.0.0.0,8080", "::,8080", "0.0.0.0,9090", "0.0.0.0,7070",
              cgroup=False)
    lab.start(lab.srv, "dns", "real-dns", "198.18.0.2,53", "2001:2::2,53", cgroup=False)
    lab.start(lab.app, "echo", "app", "0.0.0.0,8080", "::,8080", "0.0.0.0,2222")
    log = os.path.join(lab.tmp, "sidecar.log")
    lab.start(lab.app, "sidecar", log, 15006, 15001, 15053, uid=PROXY_UID)
    return log


def sidecar_log(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f]


def kernel_leftovers(lab):
    """What of ours the kernel still shows for the cgroup, the interface and the bpffs."""
    cg = sh("bpftool", "cgroup", "show", lab.cg).stdout
    with in_netns(lab.app):
        ing = sh("tc", "filter", "show", "dev", lab.iface, "ingress", check=False).stdout
        eg = sh("tc", "filter", "show", "dev", lab.iface, "egress", check=False).stdout
        qd = sh("tc", "qdisc", "show", "dev", lab.iface).stdout
    return {"cgroup": cg.strip(), "tc": (ing + eg).strip(), "clsact": "clsact" in qd,
            # maps.debug / progs.debug are the kernel's own bpf_preload iterators
            "bpffs": sorted(set(os.listdir(lab.bpffs)) - {"maps.debug", "progs.debug"})}


def test_full_contract(lab):
    log = start_world(lab)
    with in_netns(lab.app):
        record = engine.apply(engine.plan(settings(lab)))
    assert not record["skipped"]
    json.dumps(record)

    # outbound v4: redirected, original destination recovered, app sees the real peer
    out = lab.run(lab.app, "tcp", "198.18.0.2", 8080, "hello4")
    assert out.get("reply") == "sidecar 198.18.0.2:8080 | srv:hello4", out
    assert out["peer"] == ["198.18.0.2", 8080]
    assert out["rcvbuf"] > 0 and out["tcp_info_len"] > 0
    # outbound v6
    out = lab.run(lab.app, "tcp", "2001:2::2", 8080, "hello6")
    assert out.get("reply") == "sidecar 2001:2::2:8080 | srv:hello6", out
    assert out["peer"] == ["2001:2::2", 8080]
    # proxy uid is not redirected
    out = lab.run(lab.app, "tcp", "198.18.0.2", 8080, "proxy", uid=PROXY_UID)
    assert out.get("reply") == "srv:proxy", out
    # excluded port, excluded ports-for-uids; uid 1000 on the same port is redirected
    assert lab.run(lab.app, "tcp", "198.18.0.2", 9090, "x").get("reply") == "srv:x"
    assert lab.run(lab.app, "tcp", "198.18.0.2", 7070, "u", uid=1234).get("reply") == "srv:u"
    assert lab.run(lab.app, "tcp", "198.18.0.2", 7070, "u", uid=1000).get("reply").startswith("sidecar")
    # app -> 127.0.0.1 untouched: reaches the local app directly, not the sidecar
    assert lab.run(lab.app, "tcp", "127.0.0.1", 8080, "lo").get("reply") == "app:lo"

    # DNS: to a listed server -> local DNS proxy, reply source = original server
    out = lab.run(lab.app, "udp", "198.18.0.2", 53, "q4")
    assert out == {"reply": "sidecar-dns:q4", "from": ["198.18.0.2", 53]}, out
    out = lab.run(lab.app, "udp", "2001:2::2", 53, "q6")
    assert out == {"reply": "sidecar-dns:q6", "from": ["2001:2::2", 53]}, out
    out = lab.run(lab.app, "udp", "198.18.0.2", 53, "qc", "connect")
    assert out.get("reply") == "sidecar-dns:qc" and out["from"] == ["198.18.0.2", 53], out
    out = lab.run(lab.app, "udp", "198.18.0.2", 53, "px", uid=PROXY_UID)
    assert out.get("reply") == "real-dns:px", out

    # inbound via tc: srv -> app:8080 lands on 15006, original dst recovered
    out = lab.run(lab.srv, "tcp", "198.18.0.1", 8080, "in4", cgroup=False)
    assert out.get("reply") == "sidecar 198.18.0.1:8080 | app:in4", out
    out = lab.run(lab.srv, "tcp", "2001:2::1", 8080, "in6", cgroup=False)
    assert out.get("reply") == "sidecar 2001:2::1:8080 | app:in6", out
    assert out["peer"] == ["2001:2::1", 8080]
    # excluded inbound port goes straight to the app
    assert lab.run(lab.srv, "tcp", "198.18.0.1", 2222, "ex", cgroup=False).get("reply") == "app:ex"

    entries = sidecar_log(log)
    assert {"listener": 15001, "orig": ["198.18.0.2", 8080]}.items() <= entries[0].items()
    assert any(e["orig"] == ["198.18.0.1", 8080] and e["listener"] == 15006 for e in entries)

    with in_netns(lab.app):  # tc filters are read in the current network namespace
        st = engine.status(lab.bpffs)
    assert st["installed"] and st["cgroup_path"] == os.path.realpath(lab.cg)
    assert all(p["attached"] for p in st["programs"].values() if p["attached"] is not None), st
    assert st["programs"]["tp_tc_ingress"]["attached"] and st["programs"]["tp_sockops"]["attached"]
    assert st["maps"]["tp_settings"][0]["outbound_port"] == 15001
    assert "198.18.1.0/24" in st["maps"]["tp_excl_out_v4"]

    with in_netns(lab.app):
        removed = engine.uninstall(lab.bpffs, record, lab.cg)
    assert removed
    left = kernel_leftovers(lab)
    assert left == {"cgroup": "", "tc": "", "clsact": False, "bpffs": []}, left
    # traffic flows directly again
    assert lab.run(lab.app, "tcp", "198.18.0.2", 8080, "after").get("reply") == "srv:after"


def test_uninstall_from_pins_alone_and_accel_off(lab):
    log = start_world(lab)
    with in_netns(lab.app):
        engine.apply(engine.plan(settings(lab, accel=False, redirect_dns="off")))
    out = lab.run(lab.app, "tcp", "198.18.0.2", 8080, "noaccel")
    assert out.get("reply") == "sidecar 198.18.0.2:8080 | srv:noaccel", out
    assert lab.run(lab.app, "udp", "198.18.0.2", 53, "q").get("reply") == "real-dns:q"
    with in_netns(lab.app):
        st = engine.status(lab.bpffs)
    assert "tp_sk_msg" not in st["programs"] and st["maps"]["tp_settings"][0]["accel"] == 0
    with in_netns(lab.app):
        engine.uninstall(lab.bpffs, None, None)
    assert kernel_leftovers(lab) == {"cgroup": "", "tc": "", "clsact": False, "bpffs": []}
    assert sidecar_log(log)


@pytest.mark.parametrize("step", ["compile", "pin:map_tp_settings", "attach:tp_sockops",
                                  "tc:filter:tp_tc_egress", "meta"])
def test_rollback_on_injected_fault(lab, monkeypatch, step):
    monkeypatch.setenv("TPCTL_FAULT_INJECT", step)
    with in_netns(lab.app), pytest.raises(engine.EbpfApplyError) as err:
        engine.apply(engine.plan(settings(lab)))
    assert step in str(err.value) and err.value.rollback_notes
    left = kernel_leftovers(lab)
    assert left == {"cgroup": "", "tc": "", "clsact": False, "bpffs": []}, left
