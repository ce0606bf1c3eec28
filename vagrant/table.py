"""Rows of the matrix (from each guest's result.json) and their rendering. Pure."""
from __future__ import annotations

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

    @property
    def ok(self) -> bool:
        return (not self.problems and self.engine == self.expected and self.failed == 0
                and self.skipped == 0 and self.passed > 0)


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


def kernel_row(name: str, expected: str, accel: str, result: dict | None, boot_seconds: float,
               boot_problem: str | None) -> KernelRow:
    result = result or {}
    choice, tests = result.get("choice") or {}, result.get("tests") or {}
    problems = [p for p in (boot_problem,) if p] + list(result.get("prepare_problems", []))
    if not result.get("done"):
        problems.append("the guest did not finish (see console.log)")
    if tests and tests.get("exit") not in (0, None):
        problems.append(f"pytest exit {tests.get('exit')}")
    problems += [f"failed: {name}" for name in tests.get("failures", [])]
    why = "every eBPF check passed" if choice.get("engine") == "ebpf" else "; ".join(choice.get("failed_checks", []))
    return KernelRow(name, result.get("release", "?"), accel, expected, choice.get("engine", ""), why,
                     tests.get("passed", 0), tests.get("failed", 0), tests.get("skipped", 0),
                     boot_seconds, tests.get("seconds", 0.0), tuple(problems))


def fallback_row(spec_name: str, condition: str, expected: str, found: dict | None) -> FallbackRow:
    found = found or {}
    return FallbackRow(spec_name, found.get("uname_seen") or found.get("release", "?"), condition, expected,
                       found.get("engine", ""), "; ".join(found.get("why", [])), found.get("no_fallback_exit"),
                       bool(found.get("ok")))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(kernels: list[KernelRow], fallbacks: list[FallbackRow], meta: dict) -> str:
    lines = [f"Kernel matrix, {meta.get('when', '')}, accel {meta.get('accel', '?')} "
             f"({meta.get('accel_reason', '')}), host QEMU {meta.get('qemu', '?')}.",
             f"Tests in each guest{' (--ci subset)' if meta.get('ci') else ''}: "
             + " ".join(f"`{t}`" for t in meta.get("tests", [])), "",
             "| kernel | release | engine chosen (expected) | why | tests passed / failed / skipped | "
             "guest s (tests s) | result |",
             "|---|---|---|---|---|---|---|"]
    for row in kernels:
        lines.append("| " + " | ".join(_cell(c) for c in (
            row.name, row.release, f"{row.engine or '-'} ({row.expected})", row.why or "-",
            f"{row.passed} / {row.failed} / {row.skipped}", f"{row.boot_seconds:.0f} ({row.test_seconds:.0f})",
            "ok" if row.ok else "FAIL: " + "; ".join(row.problems or ("engine or tests differ",)))) + " |")
    if fallbacks:
        lines += ["", "| fallback | kernel seen | condition | engine chosen (expected) | why | "
                      "--no-fallback exit | result |", "|---|---|---|---|---|---|---|"]
        for row in fallbacks:
            lines.append("| " + " | ".join(_cell(c) for c in (
                row.name, row.release, row.condition, f"{row.engine or '-'} ({row.expected})", row.why or "-",
                "-" if row.no_fallback_exit is None else row.no_fallback_exit, "ok" if row.ok else "FAIL")) + " |")
    return "\n".join(lines) + "\n"


def as_json(kernels: list[KernelRow], fallbacks: list[FallbackRow], meta: dict) -> dict:
    return {"meta": meta, "kernels": [dict(asdict(r), ok=r.ok) for r in kernels],
            "fallbacks": [asdict(r) for r in fallbacks],
            "ok": all(r.ok for r in kernels) and all(r.ok for r in fallbacks)}
