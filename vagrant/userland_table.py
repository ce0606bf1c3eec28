"""Rows of the userland matrix (from each root's result.json and the host's timings) and their
rendering as markdown and JSON. Pure."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

SHOWN_FAILURES = 8  # failed tests named in a markdown cell; userlands.json and junit.xml have all


@dataclass(frozen=True)
class UserlandRow:
    name: str
    suite: str
    debian: str  # /etc/debian_version of the root
    python: str
    bcc: str
    llvm: str  # the LLVM major BCC links
    iptables: str  # version (default backend)
    haproxy: str
    headers: str  # what /lib/modules/$(uname -r)/build points at in the root
    expected: str  # the engine userlands.yaml expects ("" for none)
    engine: str  # what `install --ebpf-enabled --dry-run` chose ("" when it did not run)
    why: str
    passed: int
    failed: int
    skipped: int
    debootstrap_seconds: float  # 0 when the pristine root came from the cache
    setup_seconds: float
    test_seconds: float
    problems: tuple[str, ...] = field(default_factory=tuple)
    run: str = ""  # which run made the row ("when at commit"): --update keeps older rows

    @property
    def ok(self) -> bool:
        return (not self.problems and (not self.expected or self.engine == self.expected) and self.failed == 0
                and self.skipped == 0 and self.passed > 0)


def userland_row(name: str, suite: str, expected: str, result: dict | None, setup: dict) -> UserlandRow:
    """`result` is the root's result.json (None when the guest never wrote one); `setup` the host's
    record of making the root: debootstrap_seconds, seconds, exit, problems."""
    result = result or {}
    versions, choice, tests = result.get("versions") or {}, result.get("choice") or {}, result.get("tests") or {}
    problems = list(setup.get("problems", []))
    if setup.get("exit") == 124:
        problems.append("setup.sh stopped at the time limit (see setup.log)")
    elif setup.get("exit") not in (0, None):
        problems.append(f"setup.sh exit {setup['exit']} (see setup.log)")
    elif setup.get("exit") == 0 and not result.get("done"):
        problems.append("the run in the root did not finish (see guest.log)")
    if tests.get("from_log"):
        problems.append("tests counted from pytest.log up to the stop")
    if tests and tests.get("exit") not in (0, None):
        problems.append(f"pytest exit {tests.get('exit')}")
    failures = list(tests.get("failures", []))
    problems += [f"failed: {n}" for n in failures[:SHOWN_FAILURES]]
    if len(failures) > SHOWN_FAILURES:
        problems.append(f"and {len(failures) - SHOWN_FAILURES} more failed (junit.xml)")
    why = "every eBPF check passed" if choice.get("engine") == "ebpf" else "; ".join(choice.get("failed_checks", []))
    return UserlandRow(name, suite, versions.get("debian", "?"), versions.get("python", "?"), versions.get("bcc", "?"),
                       versions.get("llvm", "?"), versions.get("iptables", "?"), versions.get("haproxy", "?"),
                       versions.get("headers", "?"), expected, choice.get("engine", ""), why,
                       tests.get("passed", 0), tests.get("failed", 0), tests.get("skipped", 0),
                       round(setup.get("debootstrap_seconds", 0.0), 1), round(setup.get("seconds", 0.0), 1),
                       round(tests.get("seconds", 0.0), 1), tuple(problems))


def merge(previous: dict | None, rows: list[UserlandRow], meta: dict,
          order: list[str]) -> tuple[list[UserlandRow], dict]:
    """--update: this run's rows replace rows of the same name in the previous userlands.json, the
    others stay with the run that made them; rows come in userlands.yaml's order."""
    old_meta = (previous or {}).get("meta") or {}
    known = {f.name for f in fields(UserlandRow)}
    old = {}
    for record in (previous or {}).get("userlands", []):
        values = {k: v for k, v in record.items() if k in known}
        old[record["name"]] = UserlandRow(**dict(values, problems=tuple(values.get("problems", ())),
                                                 run=values.get("run") or old_meta.get("when", "?")))
    merged = dict(old, **{r.name: r for r in rows})
    ordered = [merged[n] for n in order if n in merged] + [r for n, r in merged.items() if n not in order]
    runs = dict(old_meta.get("runs") or {}, **meta.get("runs", {}))
    kept = {r.run for r in ordered}
    return ordered, dict(meta, runs={k: v for k, v in runs.items() if k in kept})


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _seconds(row: UserlandRow) -> str:
    first = f"{row.debootstrap_seconds:.0f}" if row.debootstrap_seconds else "cached"
    return f"{first} / {row.setup_seconds:.0f} / {row.test_seconds:.0f}"


def markdown(rows: list[UserlandRow], meta: dict) -> str:
    runs = meta.get("runs") or {}
    several = len({r.run for r in rows}) > 1
    head = [f"Userland matrix: each Debian root (debootstrap) set up by `scripts/setup.sh` and running the test "
            f"suite chrooted on the host's kernel {meta.get('kernel', '?')}, with TPCTL_NO_SKIP=1."]
    if several:
        head += [f"Rows from {len(runs)} runs (`make userlands USERLAND_ARGS=--update`):"]
        head += [f"- run {label}: pytest " + (" ".join(f"`{t}`" for t in run.get("tests", [])) or "(whole suite)")
                 for label, run in sorted(runs.items())]
    else:
        head += [f"Run {meta.get('when', '?')} at {meta.get('commit', '?')}; pytest "
                 + (" ".join(f"`{t}`" for t in meta.get("tests", [])) or "(whole suite)") + "."]
    lines = head + ["",
                    "| userland | Debian | Python | BCC (LLVM) | iptables | HAProxy | headers "
                    "| engine chosen (expected) | why | tests passed / failed / skipped "
                    "| s: debootstrap / setup / tests | result |",
                    "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        result = ("ok" if row.ok else "FAIL: " + "; ".join(row.problems or ("engine or tests differ",)))
        lines.append("| " + " | ".join(_cell(c) for c in (
            row.name, f"{row.suite} ({row.debian})", row.python, f"{row.bcc} (LLVM {row.llvm})", row.iptables,
            row.haproxy, row.headers, f"{row.engine or '-'} ({row.expected or 'any'})", row.why or "-",
            f"{row.passed} / {row.failed} / {row.skipped}", _seconds(row),
            result + (f" (run {row.run})" if several else ""))) + " |")
    return "\n".join(lines) + "\n"


def as_json(rows: list[UserlandRow], meta: dict) -> dict:
    return {"meta": meta, "userlands": [dict(asdict(r), ok=r.ok) for r in rows],
            "ok": bool(rows) and all(r.ok for r in rows)}
