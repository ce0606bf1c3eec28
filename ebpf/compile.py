"""Compile bpf_src with BCC.

Kernel headers: BCC wants /lib/modules/$(uname -r)/build (and .../source on split trees such
as Debian's). When that link is missing we look for installed headers under /usr/src and hand
them to BCC through BCC_KERNEL_SOURCE (the tree holding include/linux/kconfig.h, Debian's
-common) plus -I flags for the generated headers of the arch tree (Debian's -<arch>).

Amalgamation: BCC only turns map method calls (map.lookup(...)) into map references in its main
file, not in #included files. So the hook files and our own quoted headers are joined into one
translation unit, each piece preceded by a #line directive so compiler errors still name the
real file and line. All programs then share one set of maps. Settings stay in maps; the C text
is never rewritten.
"""
from __future__ import annotations

import contextlib
import glob
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .catalogue import ACCEL_SOURCE, SOURCES
from .errors import EbpfCompileError, HeadersNotFound

_ARCH_DIRS = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390",
              "riscv64": "riscv"}
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "powerpc64le",
             "s390x": "s390x", "riscv64": "riscv64"}
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


@dataclass(frozen=True)
class KernelHeaders:
    how: str                          # "modules-build" or "usr-src"
    source_dir: str                   # BCC_KERNEL_SOURCE, or the build link
    env: dict[str, str] = field(default_factory=dict)
    cflags: tuple[str, ...] = ()


def _has_kconfig(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "include/linux/kconfig.h"))


def _version_key(path: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", path))


def find_kernel_headers(release: str | None = None, machine: str | None = None,
                        usr_src: str = "/usr/src", modules: str = "/lib/modules") -> KernelHeaders:
    release = release or platform.release()
    machine = machine or platform.machine()
    build = os.path.join(modules, release, "build")
    source = os.path.join(modules, release, "source")
    if _has_kconfig(build) or (os.path.isdir(build) and _has_kconfig(source)):
        return KernelHeaders("modules-build", build)

    arch = _ARCH_DIRS.get(machine, machine)
    deb = _DEB_ARCH.get(machine, machine)
    exact = sorted(glob.glob(os.path.join(usr_src, f"linux-headers-{release}")))
    arch_trees = sorted(glob.glob(os.path.join(usr_src, f"linux-headers-*-{deb}")),
                        key=_version_key, reverse=True)
    for tree in exact + arch_trees:
        common = re.sub(rf"-{deb}$", "-common", tree)
        src = tree if _has_kconfig(tree) else common if _has_kconfig(common) else None
        if src is None:
            continue
        gen = [f"{tree}/arch/{arch}/include/generated/uapi", f"{tree}/arch/{arch}/include/generated",
               f"{tree}/include", f"{tree}/include/generated/uapi"]
        return KernelHeaders("usr-src", src, {"BCC_KERNEL_SOURCE": src},
                             tuple(f"-I{d}" for d in gen if os.path.isdir(d)))
    raise HeadersNotFound(
        f"no kernel headers: neither {build} nor {usr_src}/linux-headers-*-{deb} "
        f"(install linux-headers-{deb}, or link {build} to the headers)")


def amalgamate(source_dir: str, sources: tuple[str, ...] = SOURCES) -> str:
    """One translation unit from the hook files, our quoted includes inlined once each."""
    seen: set[str] = set()
    search = [source_dir, os.path.join(source_dir, "include")]

    def expand(path: str) -> list[str]:
        out = [f'#line 1 "{path}"']
        for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
            match = _INCLUDE_RE.match(line)
            if not match:
                out.append(line)
                continue
            here = [os.path.dirname(path)] + search
            found = next((os.path.join(d, match.group(1)) for d in here
                          if os.path.isfile(os.path.join(d, match.group(1)))), None)
            if found is None:
                raise EbpfCompileError(f"{path}:{lineno}: include \"{match.group(1)}\" not found")
            real = os.path.realpath(found)
            if real not in seen:
                seen.add(real)
                out.extend(expand(real))
            out.append(f'#line {lineno + 1} "{path}"')
        return out

    lines: list[str] = []
    for name in sources:
        path = os.path.realpath(os.path.join(source_dir, name))
        if not os.path.isfile(path):
            raise EbpfCompileError(f"missing BPF source {path}")
        seen.add(path)
        lines.extend(expand(path))
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def captured_stderr():
    """Collect what libbcc/clang/the verifier print on fd 2 (BCC has no other channel)."""
    buf: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf.append(tmp.read().decode(errors="replace"))


@contextlib.contextmanager
def _env(extra: dict[str, str]):
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def compile_object(source_dir: str, headers: KernelHeaders | None = None,
                   sources: tuple[str, ...] = SOURCES):
    """Returns the bcc.BPF object (maps created, programs not yet loaded)."""
    from bcc import BPF  # imported late: bcc is a system package, not a dependency

    headers = headers or find_kernel_headers()
    text = amalgamate(source_dir, sources)
    cflags = list(headers.cflags) + [f"-I{os.path.join(source_dir, 'include')}", f"-I{source_dir}"]
    with _env(headers.env), captured_stderr() as log:
        try:
            return BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:  # BCC raises bare Exception
            err = exc
    raise EbpfCompileError(f"BCC could not compile {source_dir} ({err}):\n{log[0].strip()}")


# The feature check compiles the real programs and has the kernel verify each one (a header tree
# BCC cannot digest shows up only in the compile, bcc#5231 on 6.12; code this host's LLVM emitted
# that the verifier refuses only in the load, LLVM 19 on Debian 13). Install needs that same
# object with those same loaded programs, so the check leaves it here and install takes it: BCC
# keeps each loaded function, so install's load_func returns the checked fd and verifies nothing
# twice. Anything else compiles afresh.
_checked: dict[tuple[str, tuple[str, ...]], object] = {}


def sources_for(accel: bool) -> tuple[str, ...]:
    """The hook files one install compiles: sk_msg only when acceleration is asked for (its
    map.msg_redirect_hash() needs BCC >= 0.21; Debian 11 ships 0.18)."""
    return tuple(src for src in SOURCES if accel or src != ACCEL_SOURCE)


def compile_for_check(source_dir: str, sources: tuple[str, ...] = SOURCES):
    """Compile once and keep the object for take_compiled(); raises what compile_object raises."""
    key = (os.path.realpath(source_dir), sources)
    if key not in _checked:
        _checked[key] = compile_object(source_dir, sources=sources)
    return _checked[key]


def take_compiled(source_dir: str, sources: tuple[str, ...] = SOURCES):
    """The object the feature check compiled and loaded (once), or a fresh compile."""
    bpf = _checked.pop((os.path.realpath(source_dir), sources), None)
    return bpf if bpf is not None else compile_object(source_dir, sources=sources)
