"""Feature checks: real, memoised probes of what the eBPF engine needs (docs/architecture.md §4)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache

from engine.contract import Check, bound  # one Check type for the pipeline and these probes; scaled time limits

from . import libbpf
from .catalogue import ATTACH_TYPE_NAMES, PROG_CGROUP_SOCK_ADDR, PROG_CGROUP_SOCKOPT, PROG_TYPE_NAMES, PROGRAMS
from .cgroup import cgroup2_mount
from .compile import compile_for_check, find_kernel_headers, sources_for
from .errors import EbpfCompileError, EbpfLoadError, HeadersNotFound
from .load import load_program
from .pins import is_bpffs, mount_bpffs, umount
from .plan import wanted
from .requirements import cgroup2_check, kernel_check
from .settings import DEFAULT_SOURCE_PATH


def check_kernel(release: str | None = None) -> Check:
    """The running kernel (HostFacts.kernel_release when the pipeline has it)."""
    return kernel_check(release or platform.release())


def check_cgroup2(path: str | None, mount: str | None = None) -> Check:
    """`path` is inside the cgroup2 hierarchy (HostFacts.cgroup2_mount, else mountinfo read once)."""
    mount = mount or cgroup2_mount()
    return cgroup2_check(mount, (path or mount) if mount else None)


@lru_cache(maxsize=8)
def check_bpffs(path: str | None) -> Check:
    if path and is_bpffs(path):
        return Check("bpffs", True, f"bpffs mounted at {path}", "")
    problem = _bpffs_mount_problem()
    if problem:
        return Check("bpffs", False, f"cannot mount bpffs: {problem}",
                     "run as root with CAP_SYS_ADMIN, or mount bpffs yourself")
    return Check("bpffs", True, f"bpffs mountable{f' at {path}' if path else ''}", "")


def _bpffs_mount_problem() -> str | None:
    """Mount a bpffs where nobody sees it: in a child's private mount namespace (util-linux
    unshare, propagation private), so the check, --dry-run's too, leaves the host's mounts and
    files as they were. Without unshare: a temporary directory, mounted and unmounted at once."""
    unshare = shutil.which("unshare")
    if unshare is None:
        with tempfile.TemporaryDirectory(prefix="tpctl-bpffs-probe-") as tmp:
            try:
                mount_bpffs(tmp)
                umount(tmp)
            except OSError as exc:
                return str(exc)
        return None
    target = "/tmp" if os.path.isdir("/tmp") else "/"
    try:
        result = subprocess.run([unshare, "--mount", "--propagation", "private", "mount", "-t", "bpf", "bpf", target],
                                capture_output=True, text=True, timeout=bound(30))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or f"mount exited {result.returncode}")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return Check("bcc", False, f"bcc not importable: {exc}",
                     "apt-get install python3-bpfcc (and use a venv with --system-site-packages)")
    if not libbpf.available():
        return Check("bcc", False, "libbcc.so.0 lacks the libbpf symbols we need",
                     "install BCC >= 0.18")
    return Check("bcc", True, f"bcc {bcc_version()} importable (LLVM {llvm_version()})", "")


def check_headers() -> Check:
    try:
        h = find_kernel_headers()
    except HeadersNotFound as exc:
        return Check("kernel-headers", False, str(exc),
                     "apt-get install linux-headers-$(dpkg --print-architecture)")
    return Check("kernel-headers", True, f"headers at {h.source_dir} ({h.how})", "")


@lru_cache(maxsize=1)
def check_program_types() -> tuple[Check, ...]:
    out = []
    seen = set()
    for prog in PROGRAMS:
        # only sock_addr and sockopt programs are verified for one expected attach type
        eat = (prog.attach_type or 0) if prog.prog_type in (PROG_CGROUP_SOCK_ADDR, PROG_CGROUP_SOCKOPT) else 0
        key = (prog.prog_type, eat)
        if key in seen:
            continue
        seen.add(key)
        err = libbpf.probe_prog_load(prog.prog_type, eat)
        what = PROG_TYPE_NAMES[prog.prog_type] + (f"/{ATTACH_TYPE_NAMES[eat]}" if eat else "")
        detail = f"{what} for {prog.name}: " + ("loads" if not err else os.strerror(err))
        fix = "" if not err else ("kernel >= 5.8 for getpeername hooks" if prog.optional
                                  else "a kernel with this program type (CONFIG_BPF, CONFIG_CGROUP_BPF)")
        out.append(Check(f"prog:{prog.name}", not err, detail, fix, required=not prog.optional))
    return tuple(out)


def check_compile(source_dir: str, accel: bool = False) -> Check:
    """Compile the real programs: headers can be present and still be ones this BCC cannot
    digest (6.12's internal headers with BCC 0.26, bcc#5231). The object is kept for install."""
    try:
        compile_for_check(source_dir, sources_for(accel))
    except (EbpfCompileError, HeadersNotFound) as exc:
        text = str(exc)
        first = next((ln.strip() for ln in text.splitlines() if "error:" in ln), text.splitlines()[0])
        missing = _bcc_gap(text)
        return Check("compile", False, f"BCC {bcc_version()} cannot compile {source_dir}: "
                     + (missing or first),
                     f"use --ebpf-sk-msg-accel with BCC >= {ACCEL_MIN_BCC[0]}.{ACCEL_MIN_BCC[1]} only" if missing else
                     "install BCC and kernel headers that match (linux-headers-$(uname -r)), "
                     "or use the iptables engine")
    return Check("compile", True, f"{source_dir} compiles against these headers "
                 f"(BCC {bcc_version()}, LLVM {llvm_version()})", "")


def _bcc_gap(compiler_output: str) -> str:
    """What an older BCC lacks, named, when the compiler output shows it."""
    if "invalid bpf_table operation msg_redirect_hash" in compiler_output:
        return ("its rewriter has no map.msg_redirect_hash(), which --ebpf-sk-msg-accel needs "
                f"(BCC >= {ACCEL_MIN_BCC[0]}.{ACCEL_MIN_BCC[1]})")
    return ""


def check_load(settings) -> list[Check]:
    """Have the kernel verify each program this install would load, in the object the compile
    check made: the verifier judges what this host's LLVM emitted, not the C (LLVM 19 merged a
    v4/v6 branch into pointer arithmetic on a bpf_sock that LLVM 14 never emitted). Install
    reuses the loaded programs. An optional program the kernel refuses is skipped, as install
    skips it."""
    bpf = compile_for_check(settings.programs_source_path, sources_for(settings.accel))
    refused = []
    for prog in PROGRAMS:
        if not wanted(prog, settings):
            continue
        try:
            load_program(bpf, prog)
        except EbpfLoadError as exc:
            if not prog.optional:
                refused.append(f"{prog.name}: {verifier_verdict(str(exc))}")
    if refused:
        return [Check("load", False, f"the verifier refused what BCC {bcc_version()} / LLVM "
                      f"{llvm_version()} made of " + "; ".join(refused),
                      "report it to tpctl with `tpctl install --ebpf-enabled --dry-run --verbose`, "
                      "or use the iptables engine")]
    return [Check("load", True, "the kernel's verifier accepts every program this install loads", "")]


# Lines of a verifier log that summarise rather than explain
_LOG_NOISE = re.compile(r"^(processed \d+ insns|verification time|stack depth|\s*$|-- END PROG LOAD LOG --)")


def verifier_verdict(message: str) -> str:
    """The decisive part of a refusal: the verifier's last explaining line and the instruction
    it judged (the line before it), e.g. "62: (0f) r2 += r3 / R2 pointer arithmetic on sock
    prohibited"."""
    lines = [ln.strip() for ln in message.splitlines()[1:] if not _LOG_NOISE.match(ln)]
    if not lines:
        return message.splitlines()[0] if message else "refused"
    last = lines[-1]
    insn = next((ln for ln in reversed(lines[:-1]) if re.match(r"^\d+: \(", ln)), "")
    return f"{insn} / {last}" if insn else last


# map.msg_redirect_hash(), which tp_skmsg.c (--ebpf-sk-msg-accel) needs, came with BCC 0.21
# (iovisor/bcc 1aeec1ff); Debian 11 ships 0.18.
ACCEL_MIN_BCC = (0, 21)


def bcc_compiles_accel() -> bool:
    found = re.match(r"(\d+)\.(\d+)", bcc_version())
    return found is not None and (int(found.group(1)), int(found.group(2))) >= ACCEL_MIN_BCC


@lru_cache(maxsize=1)
def bcc_version() -> str:
    try:
        from bcc import __version__
    except ImportError:
        return "?"
    return str(__version__)


@lru_cache(maxsize=1)
def llvm_version() -> str:
    """The LLVM libbcc links (different LLVMs emit different BPF code from the same C)."""
    try:
        import bcc  # noqa: F401  (maps libbcc and its libLLVM into this process)
        with open("/proc/self/maps", encoding="utf-8") as handle:
            maps = handle.read()
    except (ImportError, OSError):
        return "?"
    found = re.search(r"libLLVM[-.]?(\d+)", maps) or re.search(r"libclang-cpp\.so\.(\d+)", maps)
    return found.group(1) if found else "linked statically"


def _memo_key(source: str, accel: bool, settings) -> str | None:
    """What decides the compile and load checks: the text BCC compiles, which programs load,
    BCC, its LLVM, the kernel build and the headers it compiles against."""
    from .compile import amalgamate

    try:
        text = amalgamate(source, sources_for(accel))
        headers = find_kernel_headers()
        with open("/proc/sys/kernel/version", encoding="utf-8") as handle:
            build = handle.read().strip()
    except (EbpfCompileError, HeadersNotFound, OSError):
        return None
    identity = {"source": hashlib.sha256(text.encode()).hexdigest(), "accel": accel,
                "programs": [p.name for p in PROGRAMS if settings is not None and wanted(p, settings)],
                "bcc": bcc_version(), "llvm": llvm_version(), "kernel": [platform.release(), build],
                "headers": dataclasses.asdict(headers)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _remembered(memo, key: str | None) -> list[Check] | None:
    found = memo.get("ebpf", key) if memo is not None and key else None
    if not isinstance(found, list):
        return None
    try:
        return [Check(**{**c, "detail": c["detail"] + " (known from an earlier run with the same source, BCC, "
                                                       "LLVM and kernel)"}) for c in found]
    except (TypeError, KeyError):
        return None


def feature_checks(settings=None, memo=None) -> list:
    """`memo` (engine.memo.Memo): passed compile and load checks are kept there and reused
    while the programs' source, BCC, LLVM and kernel stay the same."""
    cg = getattr(settings, "cgroup_path", None)
    bpffs = getattr(settings, "bpffs_path", None)
    source = getattr(settings, "programs_source_path", None) or DEFAULT_SOURCE_PATH
    accel = bool(getattr(settings, "accel", False))
    bcc, headers = check_bcc(), check_headers()
    checks = [check_kernel(getattr(settings, "kernel_release", None)),
              check_cgroup2(cg, getattr(settings, "cgroup2_mount", None)), check_bpffs(bpffs), bcc, headers]
    if os.geteuid() == 0:
        types = check_program_types()
        checks.extend(types)
        if bcc.ok and headers.ok:  # without either, a compile would only repeat their failure
            key = _memo_key(source, accel, settings) if settings is not None else None
            known = _remembered(memo, key)
            if known is not None:
                return checks + known
            compiled = check_compile(source, accel)
            checks.append(compiled)
            # a program type the kernel lacks already failed above: loading would say it again
            if compiled.ok and settings is not None and all(t.ok for t in types if t.required):
                loaded = check_load(settings)
                checks.extend(loaded)
                if key and memo is not None and all(c.ok for c in loaded):
                    memo.put("ebpf", key, [dataclasses.asdict(c) for c in (compiled, *loaded)])
    else:
        checks.append(Check("prog-types", False, "program type probes need root", "run as root"))
    return checks
