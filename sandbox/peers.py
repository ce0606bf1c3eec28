"""The sandbox's servers and clients: a TCP greeter, a DNS server and their clients.

The greeter tells each client which address and port it was reached on and who connected,
so a test can see both where a connection really went and from where it arrived. Clients
print one JSON object. Every wait is bounded by a timeout.

  python -m sandbox.peers greeter --port 9000
  python -m sandbox.peers dns-server --port 53 --answer 198.18.0.99
  python -m sandbox.peers tcp HOST PORT [--sockopts]  # and what SO_RCVBUF and TCP_INFO read
  python -m sandbox.peers dns SERVER NAME [--connect]  # the query from a connected socket
  python -m sandbox.peers sink --port 9100        # counts the bytes each client sends
  python -m sandbox.peers send HOST PORT BYTES    # sends BYTES, prints what the sink counted
  python -m sandbox.peers hit HOST PORT           # connects, sends a line, closes at once
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import struct
import threading
import time

from sandbox.sidecar import dns_answer, listen_tcp

TIMEOUT = 5.0
LARGE_OPTLEN = 8192  # more than a page: a BPF getsockopt hook sees only the first page of it


def greeter(port: int) -> None:
    def answer(conn: socket.socket) -> None:
        with conn:
            local, peer = conn.getsockname(), conn.getpeername()
            conn.sendall(f"hello from {local[0]}:{local[1]} to {peer[0]}:{peer[1]}\n".encode())

    def serve(family: int) -> None:
        sock = listen_tcp(port, family)
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threads = [threading.Thread(target=serve, args=(f,), daemon=True) for f in (socket.AF_INET, socket.AF_INET6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def sink(port: int) -> None:
    """Reads each connection to its end and answers with the number of bytes it got."""
    def count(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            total = 0
            while chunk := conn.recv(65536):
                total += len(chunk)
            conn.sendall(f"{total}\n".encode())

    sock = listen_tcp(port, socket.AF_INET)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=count, args=(conn,), daemon=True).start()


def dns_server(port: int, address: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        query, peer = sock.recvfrom(4096)
        sock.sendto(dns_answer(query, address), peer)


def sockopts(sock: socket.socket) -> dict:
    """Options other than SO_ORIGINAL_DST, which a getsockopt hook must pass through: SO_RCVBUF,
    and TCP_INFO into a buffer larger than a page (Python's getsockopt stops at 1024 bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(LARGE_OPTLEN)
    length = ctypes.c_uint32(LARGE_OPTLEN)
    if libc.getsockopt(sock.fileno(), socket.IPPROTO_TCP, socket.TCP_INFO, buf, ctypes.byref(length)) != 0:
        raise OSError(ctypes.get_errno(), f"getsockopt(TCP_INFO) into {LARGE_OPTLEN} bytes")
    return {"rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), "tcp_info_len": length.value}


def tcp_client(host: str, port: int, with_sockopts: bool = False) -> dict:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((host, port))
        peer = sock.getpeername()
        options = sockopts(sock) if with_sockopts else {}
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return {"reply": data.decode().strip(), "peername": f"{peer[0]}:{peer[1]}", **options}


def send(host: str, port: int, size: int) -> dict:
    """Sends `size` bytes, half-closes, and returns what the sink says it received."""
    block = b"x" * 65536
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        left = size
        while left > 0:
            left -= sock.send(block[:min(left, len(block))])
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(64):
            reply += chunk
    return {"sent": size, "received": int(reply or b"-1")}


def hit(host: str, port: int) -> dict:
    """A client that is gone before the other side may even have accepted (fire and forget)."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        local = sock.getsockname()
        sock.sendall(b"ping\n")
    return {"closed": True, "local": f"{local[0]}:{local[1]}"}


def dns_query(server: str, name: str, connect: bool = False) -> dict:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if connect:
            sock.connect((server, 53))
            sock.send(query)
        else:
            sock.sendto(query, (server, 53))
        reply, source = sock.recvfrom(4096)
    return {"reply_from": f"{source[0]}:{source[1]}", "answer": socket.inet_ntoa(reply[-4:])}


def flow(host: str, port: int, stop_file: str, seconds: float, count: int, interval: float) -> dict:
    """One connection after another to a greeter until `stop_file` exists (or `seconds` or
    `count` run out: bounded either way), each classified by the greeter's answer: its peer is
    our own address and port when the connection went around the sidecar, the sidecar's when it
    went through. Prints "started" once the first connection is answered. `interval` paces the
    connections (a new one at most every `interval` seconds)."""
    result = {"ok": 0, "bypassed": 0, "failed": 0, "errors": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sum(result[k] for k in ("ok", "bypassed", "failed")) < count \
            and not os.path.exists(stop_file):
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
                local = sock.getsockname()
                reply = sock.makefile().readline().split()
            peer = reply[-1].rsplit(":", 1) if len(reply) == 5 and reply[0] == "hello" else None
            if peer is None:
                raise OSError(f"no greeting: {' '.join(reply)!r}")
            kind = "bypassed" if (peer[0], int(peer[1])) == (local[0], local[1]) else "ok"
        except OSError as err:
            kind = "failed"
            if len(result["errors"]) < 5:
                result["errors"].append(str(err))
        result[kind] += 1
        if result["ok"] + result["bypassed"] == 1 and kind != "failed":
            print("started", flush=True)
        time.sleep(interval)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("greeter").add_argument("--port", type=int, required=True)
    dns = sub.add_parser("dns-server")
    dns.add_argument("--port", type=int, default=53)
    dns.add_argument("--answer", required=True)
    tcp = sub.add_parser("tcp")
    tcp.add_argument("host")
    tcp.add_argument("port", type=int)
    tcp.add_argument("--sockopts", action="store_true")
    sub.add_parser("sink").add_argument("--port", type=int, required=True)
    bulk = sub.add_parser("send")
    bulk.add_argument("host")
    bulk.add_argument("port", type=int)
    bulk.add_argument("size", type=int)
    fire = sub.add_parser("hit")
    fire.add_argument("host")
    fire.add_argument("port", type=int)
    stream = sub.add_parser("flow")
    stream.add_argument("host")
    stream.add_argument("port", type=int)
    stream.add_argument("--stop-file", required=True)
    stream.add_argument("--seconds", type=float, default=30)
    stream.add_argument("--count", type=int, default=5000)
    stream.add_argument("--interval", type=float, default=0.002)
    query = sub.add_parser("dns")
    query.add_argument("server")
    query.add_argument("name")
    query.add_argument("--connect", action="store_true")
    args = parser.parse_args()
    if args.what == "greeter":
        greeter(args.port)
    elif args.what == "flow":
        print(json.dumps(flow(args.host, args.port, args.stop_file, args.seconds, args.count, args.interval)), flush=True)
    elif args.what == "dns-server":
        dns_server(args.port, args.answer)
    elif args.what == "sink":
        sink(args.port)
    elif args.what == "send":
        try:
            print(json.dumps(send(args.host, args.port, args.size)))
        except OSError as err:
            print(json.dumps({"error": str(err)}))
    elif args.what == "hit":
        try:
            print(json.dumps(hit(args.host, args.port)))
        except OSError as err:
            print(json.dumps({"error": str(err)}))
    elif args.what == "tcp":
        try:
            print(json.dumps(tcp_client(args.host, args.port, args.sockopts)))
        except OSError as err:
            print(json.dumps({"error": str(err)}))
    else:
        try:
            print(json.dumps(dns_query(args.server, args.name, args.connect)))
        except OSError as err:
            print(json.dumps({"error": str(err)}))


if __name__ == "__main__":
    main()
