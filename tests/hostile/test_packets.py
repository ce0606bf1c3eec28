"""Crafted packets against the eBPF engine's tc redirect (issue 22 item 2, docs/ebpf-packets.md):
no TCP segment reaches the app's own port past the sidecar, whatever its fragmentation or IPv6
extension headers, and on an interface without an Ethernet header. Each packet either meets the
redirect (its handshake is answered from :15006) or is dropped and counted in tp_drops.

The packets are built with scapy (python3-scapy, a Debian package: the base interpreter has it)
and sent from the server namespace, or written into a tun device of the app namespace. Where a
crafted SYN went is read from the app namespace's sockets: a SYN answered by a listener leaves a
SYN-RECV socket on that listener's port (the server namespace's kernel must not RST the SYN-ACKs
it never asked for, so its outgoing RSTs are dropped there, and only there).
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from ebpf import libbpf
from ebpf.maps import read_drops
from sandbox.netns import APP_V4, APP_V6, SRV_V4, SRV_V6, base_python
from tests.netns.conftest import ENGINES

# case -> what the app namespace's sockets must show for its SYN: "sidecar" (answered on
# :15006) or "nothing" (dropped: by tc and counted, or by the kernel itself)
EXPECTED = {
    "v4 plain": "sidecar",
    "v4 fragments, TCP header in the first": "nothing",
    "v4 tiny first fragment": "nothing",
    "v4 overlapping fragments": "nothing",
    "v6 plain": "sidecar",
    "v6 hop-by-hop": "sidecar",
    "v6 destination options": "sidecar",
    "v6 routing type 0, no segments left": "sidecar",
    "v6 atomic fragment": "sidecar",
    "v6 five headers": "sidecar",
    "v6 seven headers": "nothing",
    "v6 fragments": "nothing",
    "v6 fragments after hop-by-hop, destination options inside": "nothing",
    "v6 routed onward": "nothing",
}

# Runs in the server namespace: sends every case's SYN (source port 40000 + its index), then one
# whole connection behind a Destination Options header; prints what came back.
SENDER = r'''
import json, sys, threading, time
from scapy.all import (IP, TCP, AsyncSniffer, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Raw, conf, fragment, fragment6)

a = json.loads(sys.argv[1])
A4, S4, A6, S6 = a["app_v4"], a["srv_v4"], a["app_v6"], a["srv_v6"]
OPTS = [("MSS", 1400), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)]
l2 = conf.L2socket(iface=a["iface"])

def syn(sport, data=b""):
    tcp = TCP(sport=sport, dport=8080, flags="S", seq=1000, options=OPTS)
    return tcp / Raw(data) if data else tcp

def v4(sport, data=b""):
    return IP(src=S4, dst=A4, id=sport) / syn(sport, data)

def v6(sport, *headers, data=b""):
    pkt = IPv6(src=S6, dst=A6)
    for header in headers:
        pkt = pkt / header
    return pkt / syn(sport, data)

def overlapping(sport):
    whole = v4(sport, b"x" * 32)
    body = bytes(whole[TCP])
    first = IP(src=S4, dst=A4, id=sport, flags="MF", frag=0, proto=6) / Raw(body[:48])
    return [first, IP(src=S4, dst=A4, id=sport, frag=4, proto=6) / Raw(body[32:])]

def frag():
    return IPv6ExtHdrFragment(id=7)

CASES = {
    "v4 plain": lambda p: [v4(p)],
    "v4 fragments, TCP header in the first": lambda p: fragment(v4(p, b"x" * 64), fragsize=48),
    "v4 tiny first fragment": lambda p: fragment(v4(p, b"x" * 16), fragsize=8),
    "v4 overlapping fragments": overlapping,
    "v6 plain": lambda p: [v6(p)],
    "v6 hop-by-hop": lambda p: [v6(p, IPv6ExtHdrHopByHop())],
    "v6 destination options": lambda p: [v6(p, IPv6ExtHdrDestOpt())],
    "v6 routing type 0, no segments left": lambda p: [v6(p, IPv6ExtHdrRouting(type=0, segleft=0))],
    "v6 atomic fragment": lambda p: [v6(p, frag())],
    "v6 five headers": lambda p: [v6(p, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(),
                                     IPv6ExtHdrRouting(type=0, segleft=0), frag(), IPv6ExtHdrDestOpt())],
    "v6 seven headers": lambda p: [v6(p, IPv6ExtHdrHopByHop(), *[IPv6ExtHdrDestOpt() for _ in range(6)])],
    "v6 fragments": lambda p: fragment6(v6(p, frag(), data=b"x" * 64), 104),
    "v6 fragments after hop-by-hop, destination options inside":
        lambda p: fragment6(v6(p, IPv6ExtHdrHopByHop(), frag(), IPv6ExtHdrDestOpt(), data=b"x" * 64), 112),
    "v6 routed onward": lambda p: [v6(p, IPv6ExtHdrRouting(type=0, segleft=1, addresses=[A6]))],
}
for index, name in enumerate(a["cases"]):
    for packet in CASES[name](40000 + index):
        l2.send(Ether(dst=a["mac"]) / packet)

def whole_connection(sport):
    got, ready = [], threading.Event()
    sniffer = AsyncSniffer(iface=a["iface"], store=False, started_callback=ready.set,
                           lfilter=lambda p: TCP in p and p[TCP].dport == sport, prn=got.append)
    sniffer.start()
    ready.wait(5)
    def wait_for(test):
        for _ in range(50):
            found = [p for p in got if test(p[TCP])]
            if found:
                return found[0][TCP]
            time.sleep(0.1)
        return None
    base = IPv6(src=S6, dst=A6) / IPv6ExtHdrDestOpt()
    l2.send(Ether(dst=a["mac"]) / base / TCP(sport=sport, dport=8080, flags="S", seq=1000))
    synack = wait_for(lambda t: t.flags & 0x12 == 0x12)
    if synack is not None:
        l2.send(Ether(dst=a["mac"]) / base / TCP(sport=sport, dport=8080, flags="A", seq=1001, ack=synack.seq + 1))
    data = wait_for(lambda t: len(bytes(t.payload)) > 0) if synack is not None else None
    sniffer.stop()
    return {"synack_from": synack.sport if synack is not None else None,
            "reply": bytes(data.payload).decode(errors="replace") if data is not None else None}

print(json.dumps(whole_connection(41000)))
'''

# Runs in the app namespace: plays the far end of the tun device `name`, writing raw IPv4 (no
# link header) into it: a fragmented SYN, then a whole connection to the app's :8080.
TUN_PEER = r'''
import fcntl, json, os, select, struct, sys, time
from scapy.all import IP, TCP, Raw, fragment

name, app, peer = sys.argv[1:4]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", name.encode(), 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN | IFF_NO_PI

def read_tcp(sport, test):
    deadline = time.monotonic() + 5
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        raw = os.read(fd, 65535)
        packet = IP(raw) if raw[0] >> 4 == 4 else None
        if packet is not None and TCP in packet and packet[TCP].dport == sport and test(packet[TCP]):
            return packet[TCP]
    return None

for piece in fragment(IP(src=peer, dst=app, id=7) / TCP(sport=41500, dport=8080, flags="S") / Raw(b"x" * 64), 48):
    os.write(fd, bytes(piece))
os.write(fd, bytes(IP(src=peer, dst=app) / TCP(sport=41501, dport=8080, flags="S", seq=1000)))
synack = read_tcp(41501, lambda t: t.flags & 0x12 == 0x12)
if synack is not None:
    os.write(fd, bytes(IP(src=peer, dst=app) / TCP(sport=41501, dport=8080, flags="A", seq=1001, ack=synack.seq + 1)))
data = read_tcp(41501, lambda t: len(bytes(t.payload)) > 0) if synack is not None else None
print(json.dumps({"synack_from": synack.sport if synack is not None else None,
                  "reply": bytes(data.payload).decode(errors="replace") if data is not None else None}))
'''
TUN, TUN_APP, TUN_PEER_ADDR = "tpt0", "198.18.3.1", "198.18.3.2"


def scapy_python() -> str:
    python = base_python()
    if subprocess.run([python, "-c", "import scapy"], capture_output=True, timeout=60).returncode != 0:
        pytest.fail(f"{python} cannot import scapy: apt-get install python3-scapy")
    return python


def ebpf_install(sandbox, iface: str, *extra: str) -> None:
    """One eBPF install in the sandbox with tc on `iface` (extra: e.g. another programs source)."""
    args = ["install", "--kuma-dp-user", "5678", "--resolv-conf", sandbox.resolv_conf, "--max-retries", "0",
            *ENGINES["ebpf"], "--ebpf-cgroup-path", sandbox.cgroup, "--ebpf-bpffs-path", sandbox.mount_bpffs(),
            "--ebpf-tc-attach-iface", iface, *extra]
    result = sandbox.tpctl(*args)
    assert result.returncode == 0, f"install failed ({result.returncode}): {result.stderr}"


def drops(sandbox) -> dict[str, int]:
    fd = libbpf.obj_get(os.path.join(sandbox.bpffs, "tpctl", "map_tp_drops"))
    try:
        return read_drops(fd)
    finally:
        os.close(fd)


def app_sockets(sandbox) -> list[tuple[str, int, str, int]]:
    """(local address, local port, peer address, peer port) of every TCP socket in the app
    namespace, SYN-RECV requests included."""
    out = sandbox.run(sandbox.app, ["ss", "-Htan"], check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            (local, lport), (peer, pport) = (f.rsplit(":", 1) for f in fields[3:5])
            if lport.isdigit() and pport.isdigit():
                found.append((local.strip("[]"), int(lport), peer.strip("[]"), int(pport)))
    return found


def where_each_syn_went(sockets, cases) -> dict[str, str]:
    went = {}
    for index, name in enumerate(cases):
        ports = {lport for _l, lport, peer, pport in sockets if pport == 40000 + index and peer in (SRV_V4, SRV_V6)}
        went[name] = "nothing" if not ports else "sidecar" if ports == {15006} else f"app ports {sorted(ports)}"
    return went


def attack_over_veth(sandbox, scene, *install_extra: str) -> tuple[dict, dict, list]:
    """Install, send every case from the server namespace; (where each went, the whole
    connection's outcome, sockets on the app's port with the server as peer)."""
    ebpf_install(sandbox, sandbox.app_if, *install_extra)
    for tool in ("iptables", "ip6tables"):
        sandbox.run(sandbox.srv, [tool, "-w", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST",
                                  "-j", "DROP"], check=True)
    link = json.loads(sandbox.run(sandbox.app, ["ip", "-j", "link", "show", sandbox.app_if], check=True).stdout)
    args = {"iface": sandbox.srv_if, "mac": link[0]["address"], "app_v4": APP_V4, "srv_v4": SRV_V4,
            "app_v6": APP_V6, "srv_v6": SRV_V6, "cases": list(EXPECTED)}
    sent = sandbox.run(sandbox.srv, [scapy_python(), "-c", SENDER, json.dumps(args)], timeout=60)
    assert sent.returncode == 0, sent.stderr[-2000:]
    whole = json.loads(sent.stdout.strip().splitlines()[-1])
    sockets = app_sockets(sandbox)
    on_app_port = [s for s in sockets if s[1] == 8080 and s[2] in (SRV_V4, SRV_V6)]
    return where_each_syn_went(sockets, EXPECTED), whole, on_app_port


def test_crafted_syns_meet_the_redirect_or_are_dropped_and_counted(sandbox, scene):
    went, whole, on_app_port = attack_over_veth(sandbox, scene)
    assert went == EXPECTED
    assert on_app_port == [], "the app's own port answered the server directly"
    counted = drops(sandbox)
    assert all(counted[reason] > 0 for reason in counted), counted
    status = sandbox.tpctl("status")  # what an operator sees: the drops, by reason
    assert "dropped at tc ingress: " in status.stdout and "ipv4 fragment" in status.stdout, status.stdout
    # the whole connection behind a Destination Options header went through the sidecar
    assert whole["synack_from"] == 8080, whole
    assert (whole["reply"] or "").startswith(f"hello from {APP_V6}:8080 to ::6:"), whole
    assert f"{APP_V6}:8080" in [c.get("original_dst") for c in scene.connections("inbound")]


def tun_in_app_namespace(sandbox) -> None:
    if not os.path.exists("/dev/net/tun"):
        # a kernel matrix guest has devtmpfs but no static nodes: /dev/net/tun appears once the
        # module is loaded (a host's static node autoloads it on open instead)
        subprocess.run(["modprobe", "tun"], check=True, timeout=60)
    for argv in (["ip", "tuntap", "add", "dev", TUN, "mode", "tun"],
                 ["ip", "addr", "add", f"{TUN_APP}/24", "dev", TUN], ["ip", "link", "set", TUN, "up"]):
        sandbox.run(sandbox.app, argv, check=True)


def attack_over_tun(sandbox, *install_extra: str) -> dict:
    tun_in_app_namespace(sandbox)
    ebpf_install(sandbox, TUN, *install_extra)
    peer = sandbox.run(sandbox.app, [scapy_python(), "-c", TUN_PEER, TUN, TUN_APP, TUN_PEER_ADDR], timeout=60)
    assert peer.returncode == 0, peer.stderr[-2000:]
    return json.loads(peer.stdout.strip().splitlines()[-1])


def test_an_interface_without_ethernet_header_is_redirected_at_the_right_offset(sandbox, scene):
    whole = attack_over_tun(sandbox)
    assert (whole["reply"] or "").startswith(f"hello from {TUN_APP}:8080 to 127.0.0.6:"), whole
    assert f"{TUN_APP}:8080" in [c.get("original_dst") for c in scene.connections("inbound")]
    assert drops(sandbox)["ipv4_fragment"] > 0
    assert not [s for s in app_sockets(sandbox) if s[1] == 8080 and s[2] == TUN_PEER_ADDR]
