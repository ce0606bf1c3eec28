"""Processes for the netns tests: echo servers, a fake DNS server, a tiny sidecar that reads
SO_ORIGINAL_DST and proxies, and clients that print JSON. Every loop is bounded in time."""
import json
import select
import socket
import struct
import sys
import threading
import time

SO_ORIGINAL_DST = 80
DEADLINE = time.time() + 60  # processes stop by themselves


def _addr(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _recv_line(conn):
    data = b""
    while not data.endswith(b"\n") and time.time() < DEADLINE:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def _listen(host, port, kind=socket.SOCK_STREAM):
    s = socket.socket(_addr(host), kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in host:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    return s


def _serve(socks, handler):
    while time.time() < DEADLINE:
        ready, _, _ = select.select(socks, [], [], 0.5)
        for s in ready:
            if s.type == socket.SOCK_STREAM:
                conn, peer = s.accept()
                threading.Thread(target=handler, args=(conn, peer), daemon=True).start()
            else:
                handler(s, None)


def echo_server(prefix, ready, *binds):
    def handle(conn, peer):
        with conn:
            line = _recv_line(conn)
            conn.sendall(f"{prefix}:{line}\n".encode())
    socks = [_listen(h, int(p)) for h, p in (b.rsplit(",", 1) for b in binds)]
    open(ready, "w").close()
    _serve(socks, handle)


def dns_server(prefix, ready, *binds):
    def handle(s, _):
        data, peer = s.recvfrom(512)
        s.sendto(f"{prefix}:{data.decode()}".encode(), peer)
    socks = [_listen(h, int(p), socket.SOCK_DGRAM) for h, p in (b.rsplit(",", 1) for b in binds)]
    open(ready, "w").close()
    _serve(socks, handle)


def original_dst(conn):
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, = struct.unpack("!H", raw[2:4])
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, = struct.unpack("!H", raw[2:4])
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port


def sidecar(log, ready, inbound_port, outbound_port, dns_port):
    lock = threading.Lock()

    def handle(conn, peer):
        with conn:
            local = conn.getsockname()[1]
            try:
                host, port = original_dst(conn)
            except OSError as exc:
                host, port = f"error:{exc.errno}", 0
            line = _recv_line(conn)
            with lock, open(log, "a") as f:
                f.write(json.dumps({"listener": local, "orig": [host, port],
                                    "peer": list(peer[:2]), "data": line}) + "\n")
            if port == 0:
                conn.sendall(b"no-orig\n")
                return
            up = socket.socket(_addr(host), socket.SOCK_STREAM)
            if local == int(inbound_port):  # inbound passthrough source, as Kuma
                up.bind(("127.0.0.6" if ":" not in host else "::6", 0))
            up.settimeout(5)
            up.connect((host, port))
            up.sendall((line + "\n").encode())
            reply = _recv_line(up)
            up.close()
            conn.sendall(f"sidecar {host}:{port} | {reply}\n".encode())

    def dns(s, _):
        data, peer = s.recvfrom(512)
        s.sendto(b"sidecar-dns:" + data, peer)

    socks = [_listen("127.0.0.1", int(outbound_port)), _listen("::1", int(outbound_port)),
             _listen("0.0.0.0", int(inbound_port)), _listen("::", int(inbound_port))]
    dns_socks = [_listen("127.0.0.1", int(dns_port), socket.SOCK_DGRAM),
                 _listen("::1", int(dns_port), socket.SOCK_DGRAM)]
    open(ready, "w").close()

    def route(s, peer):
        return dns(s, peer)
    threading.Thread(target=_serve, args=(dns_socks, route), daemon=True).start()
    _serve(socks, handle)


def big_getsockopt(s, level, name, size):
    """getsockopt with a buffer larger than a page (Python caps buflen at 1024)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if libc.getsockopt(s.fileno(), level, name, buf, ctypes.byref(length)) != 0:
        raise OSError(ctypes.get_errno(), "getsockopt with a large buffer")
    return length.value


def tcp_client(host, port, msg, bind=""):
    s = socket.socket(_addr(host), socket.SOCK_STREAM)
    s.settimeout(5)
    if bind:
        s.bind((bind, 0))
    out = {}
    try:
        s.connect((host, int(port)))
        out["peer"] = list(s.getpeername()[:2])
        out["rcvbuf"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        out["tcp_info_len"] = big_getsockopt(s, socket.IPPROTO_TCP, socket.TCP_INFO, 8192)
        s.sendall((msg + "\n").encode())
        out["reply"] = _recv_line(s)
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))


def udp_client(host, port, msg, connect=""):
    s = socket.socket(_addr(host), socket.SOCK_DGRAM)
    s.settimeout(3)
    out = {}
    try:
        if connect:
            s.connect((host, int(port)))
            s.send(msg.encode())
        else:
            s.sendto(msg.encode(), (host, int(port)))
        data, peer = s.recvfrom(512)
        out = {"reply": data.decode(), "from": list(peer[:2])}
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))


if __name__ == "__main__":
    {"echo": echo_server, "dns": dns_server, "sidecar": sidecar, "tcp": tcp_client,
     "udp": udp_client}[sys.argv[1]](*sys.argv[2:])
