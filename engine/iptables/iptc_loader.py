"""python-iptables, imported without its library search running the compiler.

python-iptables looks for its own helper, libxtwrapper (a C extension next to it in
site-packages), with ctypes.util.find_library, which runs `gcc -Wl,-t` and `ld -t` for every
name it tries once ldconfig does not know it, and never does; and it looks for libxtables'
extension directory by running `ldconfig -N -v`, a scan of every library directory. Each
process that imports it pays that: 0.1 s here, minutes in a guest under software emulation (the
kernel matrix measured 1,145 s for one legacy install test on 5.10, nearly all of it in gcc).
Both have documented overrides, IPTABLES_LIBDIR and XTABLES_LIBDIR; we point them at the files
the import would find anyway, unless the user set them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
from types import ModuleType


@functools.lru_cache(maxsize=1)
def load() -> ModuleType:
    """`import iptc`, with its library directories named first (see the module's doc). Once per
    process: callers call it per rule, and the search below runs ldconfig."""
    os.environ.update(library_dirs(os.environ))
    import iptc

    return iptc


def library_dirs(environ) -> dict[str, str]:
    """The IPTABLES_LIBDIR and XTABLES_LIBDIR the import should use, for those not set."""
    found = {}
    if "IPTABLES_LIBDIR" not in environ:
        spec = importlib.util.find_spec("libxtwrapper")
        if spec is not None and spec.origin:
            found["IPTABLES_LIBDIR"] = os.path.dirname(spec.origin)
    if "XTABLES_LIBDIR" not in environ and "PYTHON_IPTABLES_XTABLES_VERSION" not in environ:
        extensions = xtables_extension_dir()
        if extensions:
            found["XTABLES_LIBDIR"] = extensions
    return found


def xtables_extension_dir() -> str | None:
    """The xtables/ directory beside the libxtables this process loads (the one python-iptables
    will use), or None to leave the search to python-iptables."""
    # found in ldconfig's cache wherever iptables is installed, so no compiler runs
    name = ctypes.util.find_library("xtables")
    if not name:
        return None
    try:
        ctypes.CDLL(name)
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "/libxtables.so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        candidate = os.path.join(os.path.dirname(path), "xtables")
        if os.path.isdir(candidate):
            return candidate
    return None
