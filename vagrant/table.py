"""Rows of the matrix (from each guest's result.json) and their rendering. Pure."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class KernelRow:
    name: str
    release: str
    accel: str
    expected: str
    engine: str  # what `install --ebpf-enabled` chose in the guest ("" when the guest died first)
    why: str
    passed: int
    failed: int
    skipped: int
    boot_seconds: float  # the whole guest: boot, checks and tests
    test_seconds: float
    problems: tuple[str, ...] = field(default_factory=tuple)
    run: str = ""  # which `make matrix` run made the row ("when, commit"): --update keeps older rows
    # what `install --nftables-enabled` was to choose and chose ("" in rows made before it was asked)
    nftables_expected: str = ""
    nftables: str = ""
    nftables_why: str = ""  # the failed checks it fell back past

    @property
    def nftables_differs(self) -> bool:
        return bool(self.nftables_expected) and self.nftables != self.nftables_expected

    @property
    def ok(self) -> bool:
        return (not self.problems and self.engine == self.expected and not self.nftables_differs
                and self.failed == 0 and self.skipped == 0 and self.passed > 0)


@dataclass(frozen=True)
class FallbackRow:
    name: str
    release: str
    condition: str
    expected: str
    engine: str
    why: str
    no_fallback_exit: int | None
    ok: bool
    run: str = ""


def kernel_row(name: str, expected: str, accel: str, result: dict | None, boot_seconds: float,
               boot_problem: str | None, nftables_expected: str = "") -> KernelRow:
    result = result or {}
    choice, tests = result.get("choice") or {}, result.get("tests") or {}
    nft = result.get("nftables_choice") or {}
    problems = [p for p in (boot_problem,) if p] + list(result.get("prepare_problems", []))
    if not result.get("done"):
        problems.append("the guest did not finish (see console.log)")
    if tests.get("from_log"):
        problems.append("tests counted from pytest.log up to the stop")
    if tests and tests.get("exit") not in (0, None):
        problems.append(f"pytest exit {tests.get('exit')}")
    problems += [f"failed: {name}" for name in tests.get("failures", [])]
    why = "every eBPF check passed" if choice.get("engine") == "ebpf" else "; ".join(choice.get("failed_checks", []))
    return KernelRow(name, result.get("release", "?"), accel, expected, choice.get("engine", ""), why,
                     tests.get("passed", 0), tests.get("failed", 0), tests.get("skipped", 0),
                     boot_seconds, tests.get("seconds", 0.0), tuple(problems),
                     nftables_expected=nftables_expected, nftables=nft.get("engine", ""),
                     nftables_why="; ".join(nft.get("failed_checks", [])))


# `pytest -v` prints one line per outcome as it goes ("tests/x.py::t[p] PASSED   [ 12%]"); a test
# that passes and then errors in teardown gets a second line. -ra's summary puts the outcome first.
_OUTCOME = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)


def tests_from_log(text: str, exit_code: int | None, seconds: float) -> dict:
    """A guest's test record when no junit.xml was written: counted from its pytest.log, and marked
    so (kernel_row names it a problem)."""
    return dict(pytest_log_counts(text), exit=exit_code, seconds=seconds, from_log=True)


def pytest_log_counts(text: str) -> dict:
    """What a `pytest -v` log says had run when pytest, or its whole guest, was stopped: junit.xml
    is written only at the end, and "0 passed" would hide how far a slow kernel got."""
    outcomes: dict[str, set[str]] = {}
    for node, outcome in _OUTCOME.findall(text):
        outcomes.setdefault(node, set()).add(outcome)
    failures = [node for node, seen in outcomes.items() if seen & {"FAILED", "ERROR"}]
    skipped = [node for node, seen in outcomes.items() if node not in failures and seen & {"SKIPPED", "XFAIL"}]
    return {"passed": len(outcomes) - len(failures) - len(skipped), "failed": len(failures),
            "skipped": len(skipped), "failures": failures}


def fallback_row(spec_name: str, condition: str, expected: str, found: dict | None) -> FallbackRow:
    found = found or {}
    return FallbackRow(spec_name, found.get("uname_seen") or found.get("release", "?"), condition, expected,
                       found.get("engine", ""), "; ".join(found.get("why", [])), found.get("no_fallback_exit"),
                       bool(found.get("ok")))


def merge(previous: dict | None, kernels: list[KernelRow], fallbacks: list[FallbackRow], meta: dict,
          kernel_order: list[str], fallback_order: list[str]) -> tuple[list[KernelRow], list[FallbackRow], dict]:
    """--update: this run's rows replace rows of the same name in the previous record (matrix.json);
    the others stay, each still naming the run that made it, and `meta` keeps those runs' tests and
    packages. Rows come in kernels.yaml's order."""
    old_meta = (previous or {}).get("meta") or {}
    # a record written before rows named their run: its rows are the run of its own date
    older = old_meta.get("when", "?")
    old_k = {r["name"]: KernelRow(**dict({k: v for k, v in r.items() if k != "ok"}, problems=tuple(r["problems"]),
                                         run=r.get("run") or older))
             for r in (previous or {}).get("kernels", [])}
    old_f = {r["name"]: FallbackRow(**dict(r, run=r.get("run") or older)) for r in (previous or {}).get("fallbacks", [])}
    new_k = dict(old_k, **{r.name: r for r in kernels})
    new_f = dict(old_f, **{r.name: r for r in fallbacks})

    def ordered(rows: dict, order: list[str]) -> list:
        return [rows[n] for n in order if n in rows] + [rows[n] for n in rows if n not in order]

    rows_k, rows_f = ordered(new_k, kernel_order), ordered(new_f, fallback_order)
    runs = dict(old_meta.get("runs") or {older: {"tests": old_meta.get("tests", []), "ci": old_meta.get("ci", False)}},
                **meta.get("runs", {}))
    kept = {r.run for r in rows_k + rows_f}
    merged = dict(meta, runs={k: v for k, v in runs.items() if k in kept},
                  packages=dict(old_meta.get("packages") or {}, **meta.get("packages", {})))
    return rows_k, rows_f, merged


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _nftables_cell(row: KernelRow) -> str:
    if not row.nftables_expected:  # a row from before the matrix asked
        return "- (not recorded)"
    return f"{row.nftables or '-'} ({row.nftables_expected})" + (f": {row.nftables_why}" if row.nftables_why else "")


def _kernel_faults(row: KernelRow) -> list[str]:
    faults = list(row.problems)
    if row.nftables_differs:
        faults.append(f"--nftables-enabled chose {row.nftables or 'nothing'}, expected {row.nftables_expected}")
    return faults or ["engine or tests differ"]


def markdown(kernels: list[KernelRow], fallbacks: list[FallbackRow], meta: dict) -> str:
    runs = meta.get("runs") or {}
    several = len({r.run for r in kernels + fallbacks}) > 1
    if several:  # rows from several runs (--update): each run described once, each row names its run
        head = [f"Kernel matrix, rows from {len(runs)} runs (`make matrix MATRIX_ARGS=--update`), accel "
                f"{meta.get('accel', '?')} ({meta.get('accel_reason', '')}), host QEMU {meta.get('qemu', '?')}."]
        head += [f"- run {label}: tests in each guest{' (--ci subset)' if run.get('ci') else ''}: "
                 + " ".join(f"`{t}`" for t in run.get("tests", [])) for label, run in sorted(runs.items())]
    else:
        head = [f"Kernel matrix, {meta.get('when', '')}, accel {meta.get('accel', '?')} "
                f"({meta.get('accel_reason', '')}), host QEMU {meta.get('qemu', '?')}.",
                f"Tests in each guest{' (--ci subset)' if meta.get('ci') else ''}: "
                + " ".join(f"`{t}`" for t in meta.get("tests", []))]
    lines = head + ["",
             "| kernel | release | engine chosen (expected) | why | --nftables-enabled chose (expected) | "
             "tests passed / failed / skipped | guest s (tests s) | result |",
             "|---|---|---|---|---|---|---|---|"]
    for row in kernels:
        lines.append("| " + " | ".join(_cell(c) for c in (
            row.name, row.release, f"{row.engine or '-'} ({row.expected})", row.why or "-", _nftables_cell(row),
            f"{row.passed} / {row.failed} / {row.skipped}", f"{row.boot_seconds:.0f} ({row.test_seconds:.0f})",
            ("ok" if row.ok else "FAIL: " + "; ".join(_kernel_faults(row)))
            + (f" (run {row.run})" if several else ""))) + " |")
    if fallbacks:
        lines += ["", "| fallback | kernel seen | condition | engine chosen (expected) | why | "
                      "--no-fallback exit | result |", "|---|---|---|---|---|---|---|"]
        for row in fallbacks:
            lines.append("| " + " | ".join(_cell(c) for c in (
                row.name, row.release, row.condition, f"{row.engine or '-'} ({row.expected})", row.why or "-",
                "-" if row.no_fallback_exit is None else row.no_fallback_exit,
                ("ok" if row.ok else "FAIL") + (f" (run {row.run})" if several else ""))) + " |")
    return "\n".join(lines) + "\n"


def as_json(kernels: list[KernelRow], fallbacks: list[FallbackRow], meta: dict) -> dict:
    return {"meta": meta, "kernels": [dict(asdict(r), ok=r.ok) for r in kernels],
            "fallbacks": [asdict(r) for r in fallbacks],
            "ok": all(r.ok for r in kernels) and all(r.ok for r in fallbacks)}
