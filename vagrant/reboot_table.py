"""The reboot test's results: what each boot of each guest recorded (its boot<N>.json on the
share, or failing that its summary line on the console), the console's timed marks, the rows and
their rendering. Pure."""
from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from dataclasses import asdict, dataclass, field

from vagrant.initramfs import MARK
from vagrant.reboot_guest import LAST_BOOT, PHASES

# every line of ours on the console, wherever a kernel message cut in before it
_MARK = re.compile(re.escape(MARK) + r" (?:(initramfs): (\S.*)|boot=(\d+) (start|done|result|check|error)\b ?(.*))$")
_RESULT = re.compile(r"^crc=([0-9a-f]{8}) ([A-Za-z0-9+/=]+)$")
PANIC = "Kernel panic - not syncing"
POWER_DOWN = "reboot: Power down"  # the kernel's last line when the guest powers itself off (pr_emerg)


@dataclass(frozen=True)
class Event:
    seconds: float  # since QEMU started, as the host read the line
    kind: str  # initramfs | start | done | result | check | error
    boot: int  # 0 for the initramfs' lines (which boot they belong to is their order)
    text: str


def events(timed_lines: list[tuple[float, str]]) -> list[Event]:
    """Our marks among the console's lines, in order."""
    found = []
    for seconds, line in timed_lines:
        index = line.find(MARK)
        if index < 0:
            continue
        match = _MARK.match(line[index:].rstrip("\r\n"))
        if not match:
            continue
        if match.group(1):
            found.append(Event(seconds, "initramfs", 0, match.group(2)))
        else:
            found.append(Event(seconds, match.group(4), int(match.group(3)), match.group(5)))
    return found


def summary(text: str) -> dict | None:
    """A boot's summary line (reboot_guest.summary_line) back to its record; None when the CRC
    does not match (a line garbled on the console) or it does not decode."""
    match = _RESULT.match(text.strip())
    if not match:
        return None
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None
    if f"{zlib.crc32(data):08x}" != match.group(1):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def summaries(found: list[Event]) -> dict[int, dict]:
    out = {}
    for event in found:
        if event.kind == "result":
            record = summary(event.text)
            if record is not None:
                out[event.boot] = record
    return out


def timings(found: list[Event], exit_seconds: float | None) -> dict[int, dict]:
    """Per boot, as the host saw the console: `up` from the initramfs starting to the checks
    starting (kernel modules, systemd, tpctl.service at boot), `checks` to their end, `down` to the
    next initramfs (shutdown, reset, the next kernel's first seconds) or to QEMU's exit. The first
    boot's `up` also counts the kernel's start from QEMU's (0)."""
    starts = [e.seconds for e in found if e.kind == "initramfs" and e.text.startswith("started")]
    out: dict[int, dict] = {}
    for boot in sorted({e.boot for e in found if e.kind == "start"}):
        start = next(e.seconds for e in found if e.kind == "start" and e.boot == boot)
        done = next((e.seconds for e in found if e.kind == "done" and e.boot == boot), None)
        began = 0.0 if boot == 1 else next((s for s in reversed(starts) if s <= start), None)
        following = next((s for s in starts if done is not None and s > done), None)
        end = following if following is not None else exit_seconds
        out[boot] = {"up": None if began is None else round(start - began, 1),
                     "checks": None if done is None else round(done - start, 1),
                     "down": None if done is None or end is None else round(end - done, 1)}
    return out


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class BootRow:
    boot: int
    phase: str
    source: str  # share (boot<N>.json), console (the summary line only) or missing
    checks: tuple[Check, ...] = ()
    engine: str = ""  # what install chose (boot 1) or tpctl.service's journal says (boot 2)
    error: str = ""
    up_seconds: float | None = None
    check_seconds: float | None = None
    down_seconds: float | None = None
    tpctl_service_seconds: float | None = None  # boot 2: tpctl.service's ExecStart, from systemd
    install_seconds: float | None = None  # boot 1: install --persist by hand
    systemd_at: float | None = None  # seconds after the kernel's start: systemd (PID 1) started
    multi_user_at: float | None = None  # ... and multi-user.target was reached (tpctl.service included)

    @property
    def passed(self) -> int:
        return sum(c.ok for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.source != "missing" and bool(self.checks) and self.passed == len(self.checks) and not self.error


def boot_row(boot: int, record: dict | None, console: dict | None, timing: dict | None) -> BootRow:
    """One boot from its share record, else its console summary (names and outcomes only)."""
    timing = timing or {}
    seconds = {"up_seconds": timing.get("up"), "check_seconds": timing.get("checks"), "down_seconds": timing.get("down")}
    phase = PHASES.get(boot, "unexpected boot")
    if record:
        checks = tuple(Check(c["name"], bool(c["ok"]), c.get("detail", "")) for c in record.get("checks", []))
        times = record.get("boot_times") or {}
        return BootRow(boot, phase, "share", checks, record.get("engine") or "", record.get("error") or "",
                       tpctl_service_seconds=record.get("tpctl_service_seconds"),
                       install_seconds=record.get("install_seconds"), systemd_at=times.get("systemd"),
                       multi_user_at=times.get("multi_user"), **seconds)
    if console:
        checks = tuple(Check(str(name), bool(ok)) for name, ok in console.get("checks", []))
        return BootRow(boot, phase, "console", checks, console.get("engine") or "", console.get("error") or "",
                       **seconds)
    return BootRow(boot, phase, "missing", **seconds)


@dataclass(frozen=True)
class EngineRun:
    name: str  # reboot.yaml's engine name
    expected: str  # the engine install must choose
    boots: tuple[BootRow, ...]
    guest_seconds: float
    exit: str  # how QEMU ended: "powered off", "killed after N s", "kernel panic", "exit N"
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return (len(self.boots) == LAST_BOOT and all(b.ok for b in self.boots) and self.exit == "powered off"
                and not self.problems)


def engine_run(name: str, expected: str, records: dict[int, dict], found: list[Event], guest_seconds: float,
               exit: str, problems: list[str]) -> EngineRun:
    console = summaries(found)
    times = timings(found, guest_seconds if exit == "powered off" else None)
    boots = tuple(boot_row(n, records.get(n), console.get(n), times.get(n)) for n in range(1, LAST_BOOT + 1))
    extra = sorted((set(records) | set(console) | set(times)) - set(range(1, LAST_BOOT + 1)))
    problems = list(problems) + [f"boot {n} ran: more boots than {LAST_BOOT}" for n in extra]
    problems += [f"boot {b.boot}: engine {b.engine}, expected {expected}" for b in boots
                 if b.boot < LAST_BOOT and b.source != "missing" and b.engine and b.engine != expected]
    return EngineRun(name, expected, boots, guest_seconds, exit, tuple(problems))


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown(runs: list[EngineRun], meta: dict) -> str:
    lines = ["# Reboot persistence: tpctl install --persist across real reboots", "",
             f"Run {meta.get('when', '?')} at {meta.get('commit', '?')}: kernel {meta.get('kernel', '?')} "
             f"({meta.get('release', '?')}), {meta.get('accel', '?')}, QEMU {meta.get('qemu', '?')}, "
             f"TPCTL_TIMEOUT_SCALE {meta.get('timeout_scale', '?')}; the guest boots a {meta.get('suite', '?')} "
             "root from its own disk (ext4 on virtio, systemd as PID 1); made by `python -m vagrant.reboot` "
             "(vagrant/reboot.py).", "",
             f"Image: {meta.get('image', {}).get('summary', '?')}. Guests {meta.get('jobs', '?')} at once; "
             f"all took {_s(meta.get('seconds'))} s. Host load (1-min average) {meta.get('load_start', '?')} at the "
             f"start, {meta.get('load_end', '?')} at the end; other QEMU guests on the host at the start: "
             f"{meta.get('other_guests', '?')}.", "",
             "Seconds per boot as the host saw the console: up (from the initramfs to the checks' start; boot 1 "
             "from QEMU's start), checks, down (to the next initramfs, or QEMU's exit); in the guest's own clock: "
             "systemd started and multi-user.target reached (tpctl.service included) after the kernel's start; "
             "tpctl at boot: tpctl.service's ExecStart (boot 2), or install --persist by hand (boot 1).", "",
             "| engine | boot | what | checks ok | engine chosen | s: up / checks / down | s: systemd / multi-user "
             "| tpctl at boot s | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for row in run.boots:
            at_boot = _s(row.tpctl_service_seconds) if row.boot == 2 else (
                f"(by hand {_s(row.install_seconds)})" if row.boot == 1 and row.install_seconds is not None else "-")
            result = "ok" if row.ok else ("FAIL" + (" (no record)" if row.source == "missing" else ""))
            if row.source == "console":
                result += " (from the console line)"
            lines.append(f"| {run.name} | {row.boot} | {row.phase} | {row.passed} / {len(row.checks)} | "
                         f"{row.engine or '-'} | {_s(row.up_seconds)} / {_s(row.check_seconds)} / "
                         f"{_s(row.down_seconds)} | {_s(row.systemd_at)} / {_s(row.multi_user_at)} | {at_boot} | "
                         f"{result} |")
    lines += ["", "| engine | expected | guest s | QEMU ended | result |", "|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.name} | {run.expected} | {_s(run.guest_seconds)} | {run.exit} | "
                     f"{'ok' if run.ok else 'FAIL'}{': ' + '; '.join(run.problems) if run.problems else ''} |")
    for run in runs:
        lines += ["", f"## {run.name}", ""]
        for row in run.boots:
            lines.append(f"Boot {row.boot} ({row.phase}):" + (" no record (see console.log)" if row.source == "missing"
                                                               else ""))
            lines += [f"- {'ok' if c.ok else 'FAIL'}: {c.name}" + (f" ({_short(c.detail)})" if c.detail else "")
                      for c in row.checks]
            if row.error:
                lines.append(f"- ERROR: {_short(row.error.strip().splitlines()[-1])}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def as_json(runs: list[EngineRun], meta: dict) -> dict:
    return {"meta": meta, "ok": bool(runs) and all(r.ok for r in runs),
            "runs": [dict(asdict(r), ok=r.ok, boots=[dict(asdict(b), ok=b.ok, passed=b.passed) for b in r.boots])
                     for r in runs]}
