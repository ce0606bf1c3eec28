"""What root runs or compiles at every boot must be root's alone (docs: "Files: root's files").

`install --persist` (engine/persist.py) writes a systemd unit that root runs at every boot: the
interpreter, tpctl's own code and the modules it imports, the eBPF program source and the
iptables executables it names. Before anything is written, check() refuses (ConfigError, exit 2)
a path the unit's command line cannot hold as it is, and code that anyone but root could change:
every path component root's, nothing group- or world-writable. Kept apart from persist.py, which
writes, removes and reports the persistence files.
"""
from __future__ import annotations

import os
import re
import stat
import sys

from engine.config import Config
from engine.errors import ConfigError
from engine.persist import ROOT_ENV, UNIT_NAME, Paths

# a word of the unit's command line: no quoting, no systemd specifier (%) or variable ($), no space
UNIT_WORD = re.compile(r"[A-Za-z0-9_./+@:,=-]+\Z")
TREE_LIMIT = 50_000  # entries checked in one tree; more is refused (a source tree holds tens)


def check(config: Config, state_dir: str | None = None) -> None:
    """For --persist: refuse (ConfigError, exit 2, before anything changes) a path the unit would
    carry that its command line cannot hold as it is, and code the unit runs or compiles as root
    at every boot (the interpreter, tpctl's own code and the modules it imports, the eBPF program
    source, the iptables executables) that anyone but root could change."""
    if not config.persist:
        return
    paths = Paths.here(state_dir)
    for what, word in (("the Python interpreter", sys.executable), ("--state-dir", paths.state_dir),
                       (f"{ROOT_ENV}'s config file", paths.config)):
        if not UNIT_WORD.match(word):
            raise ConfigError(f"--persist: {what} {word!r} goes on {UNIT_NAME}'s command line, which takes letters, "
                              "digits and _./+@:,=- only (fix: a path made of those)")
    for what, path, whole_tree in boot_code(config):
        problem = untrusted(path, whole_tree)
        if problem:
            raise ConfigError(f"--persist: {what} {path}: {problem}; root would run or compile it at every boot "
                              "(fix: make root the owner of every directory on the way and of every file, with no "
                              "group or world write bit, e.g. copy it under /usr/local or /opt as root)")


def boot_code(config: Config) -> list[tuple[str, str, bool]]:
    """(what, path, check the whole tree) for everything a boot install runs or compiles."""
    import engine

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
    code = [("the Python interpreter", sys.executable, False), ("tpctl's code", os.path.join(checkout, "engine"), True)]
    code += [("tpctl's code", os.path.join(checkout, name), True) for name in ("ebpf", "bpf_src")
             if os.path.isdir(os.path.join(checkout, name))]
    # the import path at boot: a virtualenv's site-packages whole (pip writes it), the rest by directory;
    # not the directory tpctl was started from (the boot starts in /)
    in_venv = sys.prefix != sys.base_prefix
    code += [("a directory on Python's import path", entry, in_venv and _under(entry, sys.prefix))
             for entry in sys.path if os.path.isabs(entry) and os.path.isdir(entry) and entry != os.getcwd()]
    # every module this process imported, a distribution's files included (a directory may be
    # root's while a file in it is not)
    code += [(f"the module {name}", module_file, False) for name, module_file in sorted(_module_files().items())]
    if config.ebpf_enabled and config.ebpf_programs_source_path:
        code.append(("--ebpf-programs-source-path", config.ebpf_programs_source_path, True))
    for item in config.iptables_executables.split(","):
        name, _, path = item.partition(":")
        if path.startswith("/"):
            code.append((f"--iptables-executables {name}", path, False))
    return code


def untrusted(path: str, whole_tree: bool) -> str | None:
    """Why `path` is not root's alone: a component (of the path and of what its links resolve
    to) owned by someone else or writable by group or others; with whole_tree, any entry under
    it too. None: root's alone."""
    try:
        for each in [*_components(path), *_components(os.path.realpath(path))]:
            problem = _not_roots(each, os.lstat(each))
            if problem:
                return problem
        if whole_tree and os.path.isdir(path):
            return _tree_problem(os.path.realpath(path))
    except OSError as err:
        return f"cannot check it ({err.strerror}: {err.filename})"
    return None


def _components(path: str) -> list[str]:
    parts = os.path.abspath(path).split(os.sep)[1:]
    return ["/", *(os.sep + os.path.join(*parts[:depth]) for depth in range(1, len(parts) + 1) if parts[depth - 1])]


def _not_roots(path: str, found: os.stat_result) -> str | None:
    if found.st_uid != 0:
        return f"{path} belongs to uid {found.st_uid}, not root"
    if not stat.S_ISLNK(found.st_mode) and found.st_mode & 0o022:  # a link's own mode means nothing
        return f"{path} is writable by its group or by others (mode {stat.filemode(found.st_mode)})"
    return None


def _tree_problem(top: str) -> str | None:
    seen = 0
    for root, dirs, files in os.walk(top, onerror=_raise):
        for name in (*dirs, *files):
            seen += 1
            if seen > TREE_LIMIT:
                return f"more than {TREE_LIMIT} entries to check"
            each = os.path.join(root, name)
            found = os.lstat(each)
            problem = _not_roots(each, found) or (untrusted(each, False) if stat.S_ISLNK(found.st_mode) else None)
            if problem:
                return problem
    return None


def _raise(err: OSError) -> None:
    raise err


def _under(path: str, directory: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(directory)]) == os.path.abspath(directory)


def _module_files() -> dict[str, str]:
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path) and os.path.isfile(path):
            files[name] = path
    return files
