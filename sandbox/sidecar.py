"""A minimal sidecar proxy, as an unmodified proxy would behave, for the demo and the tests.

It accepts redirected TCP on the outbound and inbound ports, asks the kernel where each
connection was going with getsockopt(SO_ORIGINAL_DST) (conntrack answers it under iptables, a
cgroup/getsockopt program under eBPF), logs one JSON line per connection and forwards the bytes
there. Inbound connections are forwarded from 127.0.0.6 / ::6, as Envoy's inbound passthrough
does, so they are not redirected again. DNS queries on the DNS port are answered with a marker
address, so a test can tell that the answer came through the sidecar.

Run it as the proxy uid: python -m sandbox.sidecar --log FILE
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time

SO_ORIGINAL_DST = 80  # SOL_IP; IP6T_SO_ORIGINAL_DST is also 80, on IPPROTO_IPV6
DNS_MARKER_V4 = "198.19.255.53"
IO_TIMEOUT = 30.0

_log_lock = threading.Lock()


def log(record: dict) -> None:
    with _log_lock:
        sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        sys.stdout.flush()


def original_destination(conn: socket.socket) -> tuple[str, int]:
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port = struct.unpack_from("!H", raw, 2)[0]
    address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    if address.startswith("::ffff:"):  # an IPv4 connection accepted on the dual-stack socket
        address = address[7:]
    return address, port


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (dst,):
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def handle(conn: socket.socket, listener: str) -> None:
    conn.settimeout(IO_TIMEOUT)
    peer = conn.getpeername()
    try:
        host, port = original_destination(conn)
    except OSError as err:
        log({"listener": listener, "peer": f"{peer[0]}:{peer[1]}", "error": f"SO_ORIGINAL_DST: {err}"})
        conn.close()
        return
    log({"listener": listener, "peer": f"{peer[0]}:{peer[1]}", "original_dst": f"{host}:{port}"})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    upstream = socket.socket(family, socket.SOCK_STREAM)
    upstream.settimeout(IO_TIMEOUT)
    try:
        if listener == "inbound":
            upstream.bind(("::6" if family == socket.AF_INET6 else "127.0.0.6", 0))
        upstream.connect((host, port))
    except OSError as err:
        log({"listener": listener, "original_dst": f"{host}:{port}", "error": f"upstream: {err}"})
        conn.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
    back.start()
    _pipe(conn, upstream)
    back.join(IO_TIMEOUT)
    conn.close()
    upstream.close()


def listen_tcp(port: int, family: int) -> socket.socket:
    """A listener on every address of one family (IPv6 only on the IPv6 socket, so that the
    IPv4 one gets IPv4 connections with IPv4 original destinations)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    sock.listen(128)
    return sock


def serve_tcp(port: int, listener: str, family: int, accept_delay: float = 0.0) -> None:
    sock = listen_tcp(port, family)
    while True:
        time.sleep(accept_delay)  # a busy proxy: connections wait in the accept queue
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn, listener), daemon=True).start()


def dns_answer(query: bytes, address: str) -> bytes:
    """An A answer to a single-question query: enough for the demo and the tests."""
    header = query[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
    end = 12
    while query[end] != 0:
        end += query[end] + 1
    question = query[12:end + 5]
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(address)
    return header + question + answer


def qname(query: bytes) -> str:
    labels, pos = [], 12
    while query[pos] != 0:
        labels.append(query[pos + 1:pos + 1 + query[pos]].decode(errors="replace"))
        pos += query[pos] + 1
    return ".".join(labels)


def serve_dns(port: int, family: int, marker: str) -> None:
    # Bound to loopback, as kuma-dp's DNS proxy: a redirected query arrives at 127.0.0.1, and
    # the reply must leave from there for conntrack to turn its source back into the server's.
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            name = qname(query)
            sock.sendto(dns_answer(query, marker), peer)
        except (IndexError, OSError) as err:
            log({"listener": "dns", "peer": f"{peer[0]}:{peer[1]}", "error": str(err)})
            continue
        log({"listener": "dns", "peer": f"{peer[0]}:{peer[1]}", "qname": name})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outbound-port", type=int, default=15001)
    parser.add_argument("--inbound-port", type=int, default=15006)
    parser.add_argument("--dns-port", type=int, default=15053)
    parser.add_argument("--dns-marker", default=DNS_MARKER_V4)
    parser.add_argument("--accept-delay", type=float, default=0.0,
                        help="seconds to wait before each accept (a slow proxy, for tests)")
    args = parser.parse_args()
    threads = []
    for family in (socket.AF_INET, socket.AF_INET6):
        threads.append(threading.Thread(target=serve_tcp, args=(args.outbound_port, "outbound", family, args.accept_delay),
                                        daemon=True))
        threads.append(threading.Thread(target=serve_tcp, args=(args.inbound_port, "inbound", family), daemon=True))
        threads.append(threading.Thread(target=serve_dns, args=(args.dns_port, family, args.dns_marker), daemon=True))
    for thread in threads:
        thread.start()
    log({"ready": True})
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
