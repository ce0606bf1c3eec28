"""What runs in the reboot test's guest (vagrant/reboot.py boots it): its systemd units and the
checks of each boot. The guest boots a Debian root from its own disk with systemd as PID 1.

At every boot, before tpctl.service (which exists from boot 1's `install --persist` on),
tpctl-reboot-net.service makes the topology afresh: network namespace "srv" holding 198.18.0.2,
joined by a veth (tpsrv there, tpapp here) to this, the guest's root namespace, holding
198.18.0.1. Then a greeter in srv on 9000, a greeter here on 8080 (the app's own service, for
inbound) and the sidecar (sandbox/sidecar.py) as uid 5678 on 15001/15006, logging to
/run/tpctl-reboot/sidecar.log. Last, tpctl-reboot-scenario.service runs this file, which counts
the boots on the disk (/var/lib/tpctl-reboot/boot) and does:

  boot 1  a connection to 198.18.0.2:9000 and one from srv to 198.18.0.1:8080 go direct; then
          `tpctl install --persist` with the engine's flags, the files and the unit it writes,
          `tpctl status`, both connections through the sidecar; reboot
  boot 2  nothing run by hand: tpctl.service ran at boot (systemctl, its journal naming the
          engine it chose afresh), `tpctl status`, both connections through the sidecar; then
          `tpctl uninstall`; reboot
  boot 3  no tpctl.service, no /etc/tpctl/config.yaml, no rule tagged tpctl in nftables or any
          iptables, no pins under /run/kuma/bpf/tpctl, no tp_ program; both connections direct;
          power off

Each boot writes boot<N>.json (and boot<N>/, what it read) to the host's 9p share, says each
check on the console as it goes and ends with one summary line (MARK ... result crc=... b64),
which the host reads when the share has nothing. Every wait is bounded (engine.timeouts.bound,
TPCTL_TIMEOUT_SCALE from systemd's DefaultEnvironment); the units' own time limits power the
guest off when this hangs, and the host kills QEMU at its own limit.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import zlib

from vagrant.initramfs import MARK

CHECKOUT = "/srv/tpctl"
VENV_BIN = f"{CHECKOUT}/.venv/bin"
STATE = "/var/lib/tpctl-reboot"  # on the disk: survives the reboots
RUN = "/run/tpctl-reboot"  # tmpfs: this boot only
SHARE = f"{RUN}/share"
SHARE_TAG = "tpctl-results"
SIDECAR_LOG = f"{RUN}/sidecar.log"
NETNS = "srv"
APP_IF, SRV_IF = "tpapp", "tpsrv"
APP_V4, SRV_V4 = "198.18.0.1", "198.18.0.2"
SERVER_PORT, APP_PORT = 9000, 8080
SIDECAR_PORTS = (15001, 15006)
PROXY_UID = 5678
PHASES = {1: "install --persist", 2: "after reboot: tpctl.service, then uninstall", 3: "after uninstall: nothing left"}
LAST_BOOT = 3
NEXT_DELAY = 5  # seconds between the checks' end and the reboot or power-off (schedule)
CMDLINE_KEY = "tpctl_reboot.job"
PERSIST_CONFIG = "/etc/tpctl/config.yaml"
PERSIST_UNIT = "/etc/systemd/system/tpctl.service"
PERSIST_WANTS = "/etc/systemd/system/multi-user.target.wants/tpctl.service"
PINS = "/run/kuma/bpf/tpctl"
SAVES = ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save")
UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "ExecMainStatus", "UnitFileState",
                   "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic")
UNITS = ("tpctl-reboot-net.service", "tpctl-reboot-greeter.service", "tpctl-reboot-app.service",
         "tpctl-reboot-sidecar.service", "tpctl-reboot-scenario.service")


# -- the units (pure) --------------------------------------------------------------------------
def units(boot_timeout: int) -> dict[str, str]:
    head = "# vagrant/reboot_guest.py: the reboot test's topology and checks\n"
    server = ("[Unit]\nDescription=tpctl reboot test: {what}\nRequires=tpctl-reboot-net.service\n"
              "After=tpctl-reboot-net.service\n\n[Service]\n{extra}WorkingDirectory=" + CHECKOUT + "\n"
              "ExecStart={start}\nRestart=on-failure\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n")
    net = [f"/usr/bin/install -d -o {PROXY_UID} -g {PROXY_UID} -m 0755 {RUN}",
           f"/usr/bin/ip netns add {NETNS}",
           f"/usr/bin/ip link add {APP_IF} type veth peer name {SRV_IF} netns {NETNS}",
           f"/usr/bin/ip addr add {APP_V4}/24 dev {APP_IF}", f"/usr/bin/ip link set {APP_IF} up",
           f"/usr/bin/ip -n {NETNS} link set lo up", f"/usr/bin/ip -n {NETNS} addr add {SRV_V4}/24 dev {SRV_IF}",
           f"/usr/bin/ip -n {NETNS} link set {SRV_IF} up"]
    return {
        "tpctl-reboot-net.service": head + (
            "[Unit]\nDescription=tpctl reboot test: netns srv and the veth to it (tpctl.service's tc interface)\n"
            # before tpctl.service: its eBPF engine attaches tc programs to tpapp at boot
            "Before=tpctl.service network-online.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            + "".join(f"ExecStart={line}\n" for line in net) + "\n[Install]\nWantedBy=multi-user.target\n"),
        "tpctl-reboot-greeter.service": head + server.format(
            what=f"the server: a greeter on {SRV_V4}:{SERVER_PORT} in netns {NETNS}",
            extra=f"NetworkNamespacePath=/run/netns/{NETNS}\n",
            start=f"/usr/bin/python3 -u -m sandbox.peers greeter --port {SERVER_PORT}"),
        "tpctl-reboot-app.service": head + server.format(
            what=f"the app's own service: a greeter on {APP_PORT} here (inbound)", extra="",
            start=f"/usr/bin/python3 -u -m sandbox.peers greeter --port {APP_PORT}"),
        "tpctl-reboot-sidecar.service": head + server.format(
            what=f"the sidecar as uid {PROXY_UID} on {SIDECAR_PORTS[0]}/{SIDECAR_PORTS[1]}",
            extra=f"User={PROXY_UID}\nGroup={PROXY_UID}\n",
            start=f"/bin/sh -c 'exec /usr/bin/python3 -u -m sandbox.sidecar >> {SIDECAR_LOG} 2>&1'"),
        "tpctl-reboot-scenario.service": head + (
            "[Unit]\nDescription=tpctl reboot test: this boot's checks, then reboot or power off\n"
            # not part of multi-user.target's ordering: the target is reached (and timed) without the checks
            "DefaultDependencies=no\nConflicts=shutdown.target\nBefore=shutdown.target\n"
            "Wants=tpctl-reboot-greeter.service tpctl-reboot-app.service tpctl-reboot-sidecar.service\n"
            "After=basic.target tpctl.service tpctl-reboot-net.service tpctl-reboot-greeter.service "
            "tpctl-reboot-app.service tpctl-reboot-sidecar.service\n"
            # waiting for tpctl.service included: a boot that hangs powers off, and the host sees why
            f"JobTimeoutSec={boot_timeout}\nJobTimeoutAction=poweroff-force\n\n"
            f"[Service]\nType=oneshot\nWorkingDirectory={CHECKOUT}\n"
            f"ExecStart={VENV_BIN}/python -m vagrant.reboot_guest\nTimeoutStartSec={boot_timeout}\n"
            "FailureAction=poweroff-force\nStandardOutput=journal\nStandardError=journal+console\n\n"
            "[Install]\nWantedBy=multi-user.target\n"),
    }


def cmdline_argument(job: dict) -> str:
    """The job on the kernel command line (QEMU gives the same one at every boot). Pure."""
    return f"{CMDLINE_KEY}=" + base64.urlsafe_b64encode(json.dumps(job, separators=(",", ":")).encode()).decode()


def job_from_cmdline(cmdline: str) -> dict | None:
    for word in cmdline.split():
        if word.startswith(CMDLINE_KEY + "="):
            return json.loads(base64.urlsafe_b64decode(word.split("=", 1)[1]))
    return None


# -- what a connection says (pure) -------------------------------------------------------------
def greeted_by(reply: str) -> tuple[str, str] | None:
    """'hello from A:P to B:Q' -> (where it was answered, who connected)."""
    words = reply.split()
    if len(words) == 5 and words[0] == "hello" and words[1] == "from" and words[3] == "to":
        return words[2], words[4]
    return None


def outbound_verdict(result: dict, records: list[dict], dst: str = f"{SRV_V4}:{SERVER_PORT}") -> str:
    """'redirected', 'direct', or what else happened, from the client's view (its own address,
    the greeter's answer) and the sidecar's records of this connection's time."""
    if "error" in result:
        return f"failed: {result['error']}"
    greeted = greeted_by(result.get("reply", ""))
    if not greeted or greeted[0] != dst:
        return f"failed: unexpected reply {result.get('reply')!r}"
    recorded = any(r.get("listener") == "outbound" and r.get("original_dst") == dst for r in records)
    through_sidecar = greeted[1] != result.get("local")
    if through_sidecar and recorded:
        return "redirected"
    if not through_sidecar and not recorded:
        return "direct"
    return (f"inconsistent: the server saw {greeted[1]} (client {result.get('local')}), "
            f"sidecar records {records}")


def inbound_verdict(result: dict, records: list[dict], dst: str = f"{APP_V4}:{APP_PORT}",
                    client: str = SRV_V4) -> str:
    """The same for a connection from srv to the app: through the sidecar it arrives from the
    inbound passthrough address 127.0.0.6 (sandbox/sidecar.py), else from the client itself."""
    if "error" in result:
        return f"failed: {result['error']}"
    greeted = greeted_by(result.get("reply", ""))
    if not greeted or greeted[0] != dst:
        return f"failed: unexpected reply {result.get('reply')!r}"
    recorded = any(r.get("listener") == "inbound" and r.get("original_dst") == dst for r in records)
    source = greeted[1].rsplit(":", 1)[0]
    if source == "127.0.0.6" and recorded:
        return "redirected"
    if source == client and not recorded:
        return "direct"
    return f"inconsistent: the app saw {greeted[1]}, sidecar records {records}"


def tagged_lines(text: str) -> list[str]:
    """Lines of a ruleset dump that carry tpctl's mark (chains TPCTL_*, comments tpctl/..., the
    table inet tpctl). Pure."""
    return [line.strip() for line in text.splitlines() if "tpctl" in line.lower()]


def tp_programs(bpftool_json: str) -> list[str]:
    """Names of loaded BPF programs that are tpctl's (tp_ prefix), from `bpftool -j prog show`. Pure."""
    try:
        programs = json.loads(bpftool_json or "[]")
    except ValueError:
        return [f"unreadable bpftool output: {bpftool_json[:200]!r}"]
    return sorted(p.get("name", "") for p in programs if str(p.get("name", "")).startswith("tp_"))


def unit_properties(text: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output -> {A: ..., B: ...}. Pure."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def persistent_line(status_text: str) -> str:
    return next((line.strip() for line in status_text.splitlines() if line.startswith("  persistent: ")), "")


def summary_line(record: dict) -> str:
    """The boot's result on one console line: compact JSON, base64, with its CRC-32 so that a
    line garbled by a kernel message in the middle is recognised and dropped. Pure."""
    compact = {"boot": record.get("boot"), "phase": record.get("phase"), "engine": record.get("engine"),
               "checks": [[c["name"], c["ok"]] for c in record.get("checks", [])],
               "uptime": record.get("uptime"), "error": (record.get("error") or "")[-300:]}
    data = json.dumps(compact, separators=(",", ":")).encode()
    return f"{MARK} boot={record.get('boot')} result crc={zlib.crc32(data):08x} {base64.b64encode(data).decode()}"


# -- the guest's side (runs as root in the guest) ----------------------------------------------
def bound(seconds: float) -> float:
    from engine.timeouts import bound as scaled

    return scaled(seconds)


def sh(argv: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=bound(timeout), **kwargs)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(argv, 124, out, f"timed out after {bound(timeout):.0f} s")
    except OSError as err:
        return subprocess.CompletedProcess(argv, 127, "", str(err))


def say(text: str) -> None:
    console(f"{MARK} {text}")


def console(line: str) -> None:
    """A line on the console at once (the host times the boots by these lines; journald's
    forwarding to the console lags under load), and in the journal through stdout."""
    print(line, flush=True)
    try:
        with open("/dev/console", "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


class Boot:
    """One boot's record: checks as they are made, the files read, written to the share at the end."""

    def __init__(self, number: int, job: dict):
        self.number, self.job = number, job
        self.record: dict = {"boot": number, "phase": PHASES.get(number, "unexpected boot"), "checks": [],
                             "engine": None, "uptime": [uptime(), None], "release": os.uname().release,
                             "job": job}
        self.files: dict[str, str] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.record["checks"].append({"name": name, "ok": bool(ok), "detail": detail[-2000:]})
        say(f"boot={self.number} check {'ok  ' if ok else 'FAIL'} {name}: {detail[:300]}")
        return bool(ok)

    def keep(self, name: str, result: subprocess.CompletedProcess | str) -> None:
        if isinstance(result, str):
            self.files[name] = result
        else:
            self.files[name] = (f"$ {' '.join(result.args)}  (exit {result.returncode})\n{result.stdout}"
                                + (f"\n--- stderr\n{result.stderr}" if result.stderr else ""))


def uptime() -> float:
    with open("/proc/uptime", encoding="utf-8") as handle:
        return float(handle.read().split()[0])


def next_boot() -> int:
    """This boot's number, counted on the disk before anything else runs (a boot that dies
    mid-way still counts, so the sequence always moves on)."""
    os.makedirs(STATE, exist_ok=True)
    path = os.path.join(STATE, "boot")
    try:
        with open(path, encoding="utf-8") as handle:
            number = int(handle.read().strip() or 0) + 1
    except (OSError, ValueError):
        number = 1
    with open(path + ".part", "w", encoding="utf-8") as handle:
        handle.write(f"{number}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".part", path)
    os.sync()
    return number


def mount_share() -> str:
    os.makedirs(SHARE, exist_ok=True)
    sh(["modprobe", "9pnet_virtio"], 60)
    result = sh(["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144", SHARE_TAG, SHARE], 60)
    return "" if result.returncode == 0 else (result.stderr.strip() or f"mount exit {result.returncode}")


def tpctl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return sh([f"{VENV_BIN}/tpctl", *args], timeout)


def listening(port: int, netns: str | None = None) -> bool:
    argv = ["ss", "-H", "-ltn", f"sport = :{port}"]
    return bool(sh(["ip", "netns", "exec", netns, *argv] if netns else argv, 30).stdout.strip())


def wait_for_topology(boot: Boot) -> bool:
    wanted = [(SERVER_PORT, NETNS), (APP_PORT, None), *((p, None) for p in SIDECAR_PORTS)]
    deadline = time.monotonic() + bound(30)
    missing = wanted
    while time.monotonic() < deadline:
        missing = [(p, ns) for p, ns in wanted if not listening(p, ns)]
        if not missing:
            break
        time.sleep(1)
    units_state = sh(["systemctl", "is-active", *UNITS[:-1]], 30).stdout.split()
    journal = sh(["journalctl", "-b", "--no-pager", "-o", "short-monotonic",
                  *(f"-u{unit}" for unit in UNITS[:-1])], 60)
    boot.keep("topology.txt", "\n\n".join(
        [(r.stdout + r.stderr) for r in (sh(["systemctl", "status", "--no-pager", "-l", *UNITS[:-1]], 60),
                                          sh(["ss", "-ltnp"], 30), sh(["ip", "-br", "addr"], 30))]
        + [journal.stdout]))
    detail = (f"not listening: {missing}; units {units_state}; journal: {journal.stdout[-1200:]}" if missing else
              f"{SRV_V4}:{SERVER_PORT} in {NETNS}, :{APP_PORT}, sidecar {SIDECAR_PORTS}; units {units_state}")
    return boot.check("topology: servers and sidecar listen (made at this boot)", not missing, detail)


def sidecar_records() -> list[dict]:
    try:
        with open(SIDECAR_LOG, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "listener" in record:
            records.append(record)
    return records


def connect(host: str, port: int, timeout: float = 10) -> dict:
    try:
        with socket.create_connection((host, port), timeout=bound(timeout)) as sock:
            local = sock.getsockname()
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return {"reply": data.decode(errors="replace").strip(), "local": f"{local[0]}:{local[1]}"}
    except OSError as err:
        return {"error": str(err)}


def _new_records(before: int, wanted: str, through_sidecar: bool) -> list[dict]:
    """The sidecar's records since `before`. When the connection went through the sidecar, waits
    a little (bounded) for its record, which the sidecar writes from its own thread; when it went
    direct, a moment is enough to see that none came."""
    deadline = time.monotonic() + (bound(3) if through_sidecar else 0.5)
    while True:
        records = sidecar_records()[before:]
        if any(r.get("listener") == wanted for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def traffic(boot: Boot, expected: str, when: str) -> None:
    """Both directions, each judged 'redirected' or 'direct' against what is expected now."""
    before = len(sidecar_records())
    result = connect(SRV_V4, SERVER_PORT)
    greeted = greeted_by(result.get("reply", ""))
    records = _new_records(before, "outbound", bool(greeted and greeted[1] != result.get("local")))
    verdict = outbound_verdict(result, records)
    boot.check(f"outbound {APP_V4} -> {SRV_V4}:{SERVER_PORT} {expected} ({when})", verdict == expected,
               f"{verdict}; {json.dumps(result)}")
    before = len(sidecar_records())
    client = sh(["ip", "netns", "exec", NETNS, "/usr/bin/python3", "-m", "sandbox.peers", "tcp", APP_V4,
                 str(APP_PORT)], 60, cwd=CHECKOUT)
    try:
        result = json.loads(client.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"error": f"client printed nothing usable: {client.stdout!r} {client.stderr!r}"}
    greeted = greeted_by(result.get("reply", ""))
    records = _new_records(before, "inbound", bool(greeted and greeted[1].startswith("127.0.0.6:")))
    verdict = inbound_verdict(result, records)
    boot.check(f"inbound {SRV_V4} -> {APP_V4}:{APP_PORT} {expected} ({when})", verdict == expected,
               f"{verdict}; {json.dumps(result)}")


def tpctl_objects(boot: Boot, name: str) -> dict:
    """Everything of tpctl's the kernel holds: tagged rules (nftables, iptables of both backends
    and families), pins, tp_ programs, tc filters on the veth."""
    dumps = [sh(["nft", "list", "ruleset"], 120)] + [sh([tool], 120) for tool in SAVES]
    rules = [f"{d.args[0]}: {line}" for d in dumps for line in tagged_lines(d.stdout)]
    pins = sorted(os.listdir(PINS)) if os.path.isdir(PINS) else []
    programs = tp_programs(sh(["bpftool", "-j", "prog", "show"], 120).stdout)
    tc = [sh(["tc", "filter", "show", "dev", APP_IF, hook], 60) for hook in ("ingress", "egress")]
    filters = [f"{hook}: {line.strip()}" for hook, t in zip(("ingress", "egress"), tc) for line in t.stdout.splitlines()
               if "tp_" in line]
    boot.keep(name, "\n\n".join([*(f"$ {' '.join(d.args)} (exit {d.returncode})\n{d.stdout}{d.stderr}" for d in dumps),
                                 f"pins under {PINS}: {pins}", f"tp_ programs: {programs}", f"tc filters: {filters}"]))
    return {"rules": rules, "pins": pins, "programs": programs, "tc": filters}


def count(objects: dict) -> str:
    return ", ".join(f"{len(v)} {k}" for k, v in objects.items())


def unit_state() -> dict[str, str]:
    result = sh(["systemctl", "show", "tpctl.service", *(f"-p{p}" for p in UNIT_PROPERTIES)], 60)
    return unit_properties(result.stdout)


def persisted_files() -> dict[str, bool]:
    return {PERSIST_CONFIG: os.path.isfile(PERSIST_CONFIG), PERSIST_UNIT: os.path.isfile(PERSIST_UNIT),
            PERSIST_WANTS: os.path.islink(PERSIST_WANTS)}


def status(boot: Boot, name: str) -> tuple[subprocess.CompletedProcess, dict]:
    text = tpctl("status", timeout=300)
    boot.keep(f"{name}.txt", text)
    as_json = tpctl("status", "--json", timeout=300)
    boot.keep(f"{name}.json", as_json)
    try:
        return text, json.loads(as_json.stdout)
    except ValueError:
        return text, {}


def engine_said(stderr: str) -> str:
    from vagrant.guest import engine_of

    return engine_of(stderr)[0]


def boot_install(boot: Boot) -> None:
    job = boot.job
    expected = job["engine"]
    if not wait_for_topology(boot):
        return
    traffic(boot, "direct", "before install")
    args = ["install", "--persist", "--kuma-dp-user", str(PROXY_UID), *job["flags"]]
    started = time.monotonic()
    installed = tpctl(*args, timeout=1800)
    boot.record["install_seconds"] = round(time.monotonic() - started, 1)
    boot.keep("install.txt", installed)
    boot.record["engine"] = engine_said(installed.stderr)
    boot.check(f"tpctl {' '.join(args)} exits 0", installed.returncode == 0,
               f"exit {installed.returncode} in {boot.record['install_seconds']} s; {installed.stderr.strip()[-1500:]}")
    boot.check(f"install chose {expected}", boot.record["engine"] == expected, f"chose {boot.record['engine']}")
    files = persisted_files()
    boot.check("install --persist wrote config.yaml, tpctl.service and its wants link", all(files.values()),
               json.dumps(files))
    for path in (PERSIST_CONFIG, PERSIST_UNIT):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                boot.keep(os.path.basename(path), handle.read())
    # what systemd makes of the unit file (recorded, not judged: a warning there does not stop a boot)
    verify = sh(["systemd-analyze", "verify", PERSIST_UNIT], 120)
    boot.keep("systemd-analyze-verify.txt", verify)
    boot.record["unit_verify"] = (verify.stdout + verify.stderr).strip()[-2000:]
    enabled = sh(["systemctl", "is-enabled", "tpctl.service"], 60)
    boot.check("systemctl is-enabled tpctl.service: enabled", enabled.stdout.strip() == "enabled",
               (enabled.stdout + enabled.stderr).strip())
    text, report = status(boot, "status")
    line = persistent_line(text.stdout)
    boot.check("tpctl status: persistent: yes, engine as installed", text.returncode == 0
               and line.startswith("persistent: yes") and report.get("engine") == expected
               and (report.get("persistent") or {}).get("persistent") is True,
               f"exit {text.returncode}; {line!r}; json engine {report.get('engine')}, persistent {report.get('persistent')}")
    traffic(boot, "redirected", "installed by hand")
    objects = tpctl_objects(boot, "objects.txt")
    boot.check("the kernel holds tpctl's objects (what boot 3 must not find)", any(objects.values()), count(objects))


def boot_persisted(boot: Boot) -> None:
    expected = boot.job["engine"]
    wait_for_topology(boot)
    props = unit_state()
    boot.record["tpctl_service"] = props
    start, end = (int(props.get(k) or 0) for k in ("ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic"))
    boot.record["tpctl_service_seconds"] = round((end - start) / 1e6, 1) if start and end >= start else None
    boot.keep("systemctl-status.txt", sh(["systemctl", "status", "--no-pager", "-l", "tpctl.service"], 60))
    boot.check("tpctl.service ran at this boot and is active (exited), result success",
               props.get("LoadState") == "loaded" and props.get("ActiveState") == "active"
               and props.get("SubState") == "exited" and props.get("Result") == "success"
               and props.get("ExecMainStatus") == "0" and start > 0,
               f"{props}; ExecStart took {boot.record['tpctl_service_seconds']} s")
    journal = sh(["journalctl", "-b", "-u", "tpctl.service", "--no-pager", "-o", "cat"], 120)
    boot.keep("journal-tpctl.txt", sh(["journalctl", "-b", "-u", "tpctl.service", "--no-pager",
                                       "-o", "short-monotonic"], 120))
    boot.record["engine"] = engine_said(journal.stdout)
    boot.check(f"its journal says the engine chosen at boot: {expected}", boot.record["engine"] == expected,
               "; ".join(line for line in journal.stdout.splitlines() if line.startswith("# "))[-1500:]
               or journal.stdout[-1500:])
    text, report = status(boot, "status")
    line = persistent_line(text.stdout)
    boot.check("tpctl status: installed, no drift, persistent: yes", text.returncode == 0
               and report.get("installed") is True and report.get("engine") == expected
               and not report.get("drift") and line.startswith("persistent: yes"),
               f"exit {text.returncode}; engine {report.get('engine')}; drift {report.get('drift')}; {line!r}")
    traffic(boot, "redirected", "by tpctl.service at boot")
    objects = tpctl_objects(boot, "objects.txt")
    boot.check("the kernel holds tpctl's objects again", any(objects.values()), count(objects))
    removed = tpctl("uninstall", timeout=900)
    boot.keep("uninstall.txt", removed)
    boot.check("tpctl uninstall exits 0", removed.returncode == 0, removed.stderr.strip()[-1500:])
    files = persisted_files()
    boot.check("uninstall removed config.yaml, tpctl.service and its link", not any(files.values()), json.dumps(files))
    traffic(boot, "direct", "right after uninstall")


def boot_removed(boot: Boot) -> None:
    wait_for_topology(boot)
    props = unit_state()
    boot.record["tpctl_service"] = props
    files = persisted_files()
    boot.check("no tpctl.service (systemd: not-found) and no file of it", props.get("LoadState") == "not-found"
               and not any(files.values()), f"{props.get('LoadState')}/{props.get('ActiveState')}; {json.dumps(files)}")
    journal = sh(["journalctl", "-b", "-u", "tpctl.service", "--no-pager", "-o", "cat", "-q"], 120)
    boot.check("tpctl.service did not run at this boot (no journal entry)", not journal.stdout.strip(),
               journal.stdout[-500:])
    boot.keep("journal-tpctl-previous-boot.txt", sh(["journalctl", "-b", "-1", "-u", "tpctl.service", "--no-pager",
                                                     "-o", "short-monotonic"], 120))
    objects = tpctl_objects(boot, "objects.txt")
    boot.check("no rule tagged tpctl (nft, iptables and ip6tables, nft and legacy)", not objects["rules"],
               "; ".join(objects["rules"])[:1500])
    boot.check(f"no pins under {PINS}, no tp_ program, no tc filter on {APP_IF}",
               not (objects["pins"] or objects["programs"] or objects["tc"]), count(objects))
    text, report = status(boot, "status")
    line, persistent = persistent_line(text.stdout), report.get("persistent") or {}
    # with nothing persisted, status prints no persistent line (only a partial one is worth a line)
    boot.check("tpctl status: not installed, nothing persistent", text.stdout.startswith("tpctl: not installed")
               and report.get("installed") is False and persistent.get("persistent") is False
               and not persistent.get("unit") and not persistent.get("config") and not line.startswith("persistent: part"),
               f"exit {text.returncode}; {text.stdout.strip()[:300]!r}; json persistent {persistent}")
    traffic(boot, "direct", "after uninstall and reboot")


def facts(boot: Boot) -> None:
    """Every boot: systemd is PID 1 and / is the disk (not an initramfs, not a share)."""
    with open("/proc/1/comm", encoding="utf-8") as handle:
        init = handle.read().strip()
    root = sh(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "/"], 30).stdout.split()
    boot.check("PID 1 is systemd, / is /dev/vda (ext4)", init == "systemd" and root == ["/dev/vda", "ext4"],
               f"PID 1 {init}; / {root}; kernel {os.uname().release}")
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as handle:
        boot.record["boot_id"] = handle.read().strip()


def boot_times() -> dict[str, float | None]:
    """Seconds since the kernel started at which systemd started and multi-user.target was reached
    (systemd-analyze refuses while a job of the first transaction, this one, still runs)."""
    manager = unit_properties(sh(["systemctl", "show", "-p", "UserspaceTimestampMonotonic"], 30).stdout)
    target = unit_properties(sh(["systemctl", "show", "multi-user.target", "-p", "ActiveEnterTimestampMonotonic"],
                                30).stdout)
    return {"systemd": microseconds_to_seconds(manager.get("UserspaceTimestampMonotonic", "")),
            "multi_user": microseconds_to_seconds(target.get("ActiveEnterTimestampMonotonic", ""))}


def microseconds_to_seconds(value: str) -> float | None:
    """A systemd monotonic timestamp ('123456789', microseconds) in seconds; None when unset (0). Pure."""
    return round(int(value) / 1e6, 1) if value.isdigit() and int(value) else None


def save(boot: Boot, share_problem: str) -> None:
    boot.record["uptime"][1] = uptime()
    boot.record["boot_times"] = boot_times()
    text = json.dumps(boot.record, indent=1, sort_keys=True)
    places = [STATE] + ([] if share_problem else [SHARE])
    for place in places:
        folder = os.path.join(place, f"boot{boot.number}")
        os.makedirs(folder, exist_ok=True)
        for name, content in boot.files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
                handle.write(content)
        with open(os.path.join(place, f"boot{boot.number}.json.part"), "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(os.path.join(place, f"boot{boot.number}.json.part"), os.path.join(place, f"boot{boot.number}.json"))
    os.sync()
    console(summary_line(boot.record))


def main() -> int:
    number = next_boot()
    say(f"boot={number} start uptime={uptime():.1f}")
    with open("/proc/cmdline", encoding="utf-8") as handle:
        job = job_from_cmdline(handle.read()) or {}
    boot = Boot(number, job)
    share_problem = mount_share()
    steps = {1: boot_install, 2: boot_persisted, 3: boot_removed}
    try:
        facts(boot)
        if share_problem:
            boot.record["share_problem"] = share_problem
            say(f"boot={number} the results share did not mount: {share_problem} (the console line carries them)")
        if not job:
            boot.check("the job is on the kernel command line", False, "no tpctl_reboot.job= in /proc/cmdline")
        elif number in steps:
            steps[number](boot)
        else:
            boot.check("at most three boots", False, f"boot {number}: the sequence should have powered off")
    except Exception:  # noqa: BLE001 - whatever broke, the boot is recorded and the sequence moves on
        boot.record["error"] = traceback.format_exc()
        say(f"boot={number} error: {boot.record['error'][-500:]}")
    finally:
        save(boot, share_problem)
        ok = sum(c["ok"] for c in boot.record["checks"])
        action = "reboot" if number < LAST_BOOT else "poweroff"
        say(f"boot={number} done checks={ok}/{len(boot.record['checks'])} next={action} uptime={uptime():.1f}")
        schedule(action)
    return 0


def schedule(action: str) -> None:
    """Reboot or power off a few seconds after this unit has ended: a shutdown that began while
    it ran would stop it, fail it, and its FailureAction would power the guest off instead."""
    timer = sh(["systemd-run", "--no-block", f"--on-active={NEXT_DELAY}", "--unit", "tpctl-reboot-next",
                "--description", f"tpctl reboot test: {action}", "/usr/bin/systemctl", "--no-block", action], 60)
    if timer.returncode:
        say(f"systemd-run failed ({timer.stderr.strip()}): {action} now")
        sh(["systemctl", "--no-block", action], 60)


if __name__ == "__main__":
    sys.exit(main())
