"""State: what install made, recorded atomically under a lock.

The file (default /run/tpctl/state.json; TPCTL_STATE_DIR or --state-dir move it) is written
to a temporary file, fsync'd and renamed, under flock, so a crash never leaves half a record and
two tpctl processes never interleave. Uninstall and status read it; the journal beside it
(engine/journal.py) and every object's ownership tag let both work when the file is gone or
damaged.

Whoever can write the directory can plant records tpctl acts on as root, so it must be root's
and writable by root only (made 0700; an existing one that is not, or a symlink, is refused with
exit 2), and every file in it is opened relative to the directory's fd with O_NOFOLLOW: a
symlink planted as `lock` or `state.json` is never followed, the lock is never truncated. A
record is read bounded (size, a regular file, UTF-8, JSON) and type-checked once, here; each
engine checks its own part (validate_record).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator

from engine.errors import ConfigError

DEFAULT_DIR = "/run/tpctl"
STATE_ENV = "TPCTL_STATE_DIR"
VERSION = 1
NAME = "state.json"
JOURNAL_NAME = "journal.json"  # engine/journal.py
MEMO_NAME = "checks.json"  # engine/memo.py
TEMP_PREFIX = ".tmp."  # atomic writes in progress; one left behind is a crash's, removed next time
LOCK_NAME = "lock"
MAX_RECORD_BYTES = 64 << 20  # an install with 20,000 exclusions records a few MB; more is not ours
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FIX = "or name another with --state-dir / TPCTL_STATE_DIR"


def state_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get(STATE_ENV) or DEFAULT_DIR


def _trusted_owners() -> tuple[int, ...]:
    return (0, os.geteuid())  # root, and the user running tpctl (root, except in unit tests)


def _unsafe(path: str, st: os.stat_result) -> str | None:
    """Why the state directory `path` (lstat'ed or fstat'ed as `st`) must not be used."""
    if stat.S_ISLNK(st.st_mode):
        return f"the state directory {path} is a symlink (fix: remove it, tpctl makes the directory; {_FIX})"
    if not stat.S_ISDIR(st.st_mode):
        return f"the state directory {path} is not a directory (fix: remove it; {_FIX})"
    if st.st_uid not in _trusted_owners():
        return (f"the state directory {path} is owned by uid {st.st_uid}, not root: its owner can plant records "
                f"(fix: chown root: {path}; {_FIX})")
    if st.st_mode & 0o022:
        return (f"the state directory {path} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"anyone can plant records (fix: chmod 0700 {path}; {_FIX})")
    return None


def foreign_writable_parent(path: str) -> tuple[str, os.stat_result] | None:
    """The first existing directory above `path` that another user could change (not root's or
    this user's, or group/world-writable without the sticky bit), with its stat: whoever can
    write a parent can swap what `path` names between a check and its use. None when there is none."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(parent)
            writable_by_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
            if st.st_uid not in _trusted_owners() or writable_by_others:
                return parent, st
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)


def _unsafe_parent(path: str) -> str | None:
    found = foreign_writable_parent(path)
    if found is None:
        return None
    parent, st = found
    return (f"the state directory {path} is inside {parent}, which another user can change "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}) (fix: {_FIX.removeprefix('or ')})")


def check_dir(directory: str) -> bool:
    """True when the state directory exists and is safe, False when there is none; ConfigError
    (exit 2, naming it and the fix) when it is unsafe. Nothing is created."""
    try:
        found = os.lstat(directory)
    except FileNotFoundError:
        found = None
    except OSError as err:
        raise ConfigError(f"the state directory {directory} cannot be examined ({err.strerror}); {_FIX}") from None
    problem = (_unsafe(directory, found) if found else None) or _unsafe_parent(directory)
    if problem:
        raise ConfigError(problem)
    return found is not None


@contextlib.contextmanager
def _opened(directory: str, create: bool = False) -> Iterator[int]:
    """The checked state directory as an fd (FileNotFoundError when absent and not `create`):
    the directory checked is the directory used, whatever is renamed meanwhile."""
    made = False
    if not check_dir(directory):
        if not create:
            raise FileNotFoundError(directory)
        os.makedirs(os.path.dirname(os.path.abspath(directory)), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another tpctl made it first: checked below
            os.mkdir(directory, 0o700)
            made = True
    fd = os.open(directory, _DIR_FLAGS)
    try:
        if made:
            os.fchmod(fd, 0o700)  # whatever the umask
        problem = _unsafe(directory, os.fstat(fd))
        if problem:
            raise ConfigError(problem)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold the state lock for the whole install/uninstall; temp files of a crashed write go.
    The directory is made here: only once an install is going to apply."""
    with _opened(directory, create=True) as dir_fd:
        try:
            lock = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as err:
            raise ConfigError(f"the state lock {os.path.join(directory, LOCK_NAME)} cannot be opened ({err.strerror}; "
                              "a symlink is never followed) (fix: remove it)") from None
        try:
            if not stat.S_ISREG(os.fstat(lock).st_mode):
                raise ConfigError(f"the state lock {os.path.join(directory, LOCK_NAME)} is not a regular file "
                                  "(fix: remove it)")
            fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in os.listdir(dir_fd):
                if stale.startswith((TEMP_PREFIX, ".state.")):  # .state.: an older tpctl's prefix
                    with contextlib.suppress(OSError):
                        os.unlink(stale, dir_fd=dir_fd)
            yield
        finally:
            os.close(lock)


def _read_bounded(dir_fd: int, name: str) -> str:
    """The file's text: a regular file (never a symlink, FIFO or device), at most
    MAX_RECORD_BYTES, UTF-8. ValueError says what else it is."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("is not a regular file")
        data = handle.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"is larger than {MAX_RECORD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def read_json(directory: str, name: str, what: str) -> tuple[dict | None, str | None]:
    """(record, None), (None, None) when there is no file, or (None, why it is unusable)."""
    path = os.path.join(directory, name)
    try:
        with _opened(directory) as dir_fd:
            text = _read_bounded(dir_fd, name)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"the {what} {path} cannot be read ({err.strerror}; a symlink is never followed)"
    except ValueError as err:
        return None, f"the {what} {path} {err}"
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as err:
        return None, f"the {what} {path} is not JSON ({'empty' if not text.strip() else err})"
    if not isinstance(record, dict):
        return None, f"the {what} {path} holds a JSON {type(record).__name__}, not a record"
    if record.get("version") != VERSION:
        return None, f"the {what} {path} has version {record.get('version')!r}, this tpctl reads {VERSION}"
    return record, None


def read(directory: str) -> tuple[dict | None, str | None]:
    """The state record, and why it is unusable when it is there but damaged."""
    record, problem = read_json(directory, NAME, "state file")
    why = record_problem(record) if record is not None else None
    if why:
        return None, f"the state file {os.path.join(directory, NAME)} {why}"
    return record, problem


_TOP_LEVEL = {"digest": str, "installed_at": str, "choice": dict, "config": dict, "ipv6_passthrough_added": bool}


def shape_problem(value: object, shape: object, where: str = "record") -> str | None:
    """Where JSON read back from a file differs from `shape`: a type or a tuple of types, [shape]
    for a list of it, {key: shape} for a record whose listed keys match where present, {"*":
    shape} for a map whose values all match. None when it matches. (Engines' validate_record.)"""
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is a {type(value).__name__}, not a list"
        return next((p for i, v in enumerate(value) if (p := shape_problem(v, shape[0], f"{where}[{i}]"))), None)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is a {type(value).__name__}, not a record"
        pairs = [(k, v, shape["*"]) for k, v in value.items()] if "*" in shape else \
            [(k, value[k], s) for k, s in shape.items() if k in value]
        return next((p for k, v, s in pairs if (p := shape_problem(v, s, f"{where}.{k}"))), None)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # JSON true is no number
        return f"{where} is a {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}"
    return None


def record_problem(record: object) -> str | None:
    """Why an install record (the state file's, each of the journal's) cannot be used: the
    shape every install writes, an engine this tpctl has, and that engine's part as the engine
    itself checks it. None when it can be used."""
    from engine import registry  # the registry's engines import this module

    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__} where an install record belongs"
    name = record.get("engine")
    if not isinstance(name, str):
        return f"names engine {name!r}, not an engine name"
    engine = registry.get(name)
    if engine is None:
        return f"names engine {name!r}, which this tpctl does not have ({', '.join(registry.names())})"
    wrong = shape_problem(record, _TOP_LEVEL)
    if wrong:
        return f"has {wrong}"
    part = record.get(name)
    if not isinstance(part, dict):
        return f"names engine {name!r} without that engine's record"
    why = engine.validate_record(part)  # the engine's own check of its part (engine/contract.py)
    return f"holds a {name} record this tpctl cannot use: {why}" if why else None


def engine_part(record: dict | None, name: str) -> dict | None:
    """An engine's part of a state record, when that record is that engine's install."""
    if not record or record.get("engine") != name or not isinstance(record.get(name), dict):
        return None
    return record[name]


def owns_passthrough(record: dict | None) -> bool:
    """Did the recorded install add ::6/128? (Records before 2026-12 keep it in the engine's part.)"""
    if not record:
        return False
    part = record.get(str(record.get("engine")))
    return bool(record.get("ipv6_passthrough_added") or (isinstance(part, dict) and part.get("ipv6_passthrough_added")))


def install_record(engine: str, digest: str, choice: dict, config: dict, **engine_parts) -> dict:
    """The record every install writes: which engine, for which plan (digest), when and why."""
    return {"engine": engine, "digest": digest, "choice": choice, "config": config,
            "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **engine_parts}


def write_json(directory: str, name: str, record: dict) -> None:
    """Into the state directory, which must exist (locked() makes it)."""
    # one json.dumps without indent: the C encoder (json.dump and indent take the Python one,
    # 10x slower for an install with 20,000 exclusions, written at every step); status --json
    # is the readable view
    text = json.dumps({**record, "version": VERSION}, sort_keys=True) + "\n"
    with _opened(directory) as dir_fd:
        _write_in(dir_fd, name, text, 0o600)


def write_atomically(path: str, text: str, mode: int = 0o600, directory_mode: int = 0o700) -> None:
    """A temp file beside `path`, fsync'd, renamed over it, and the directory fsync'd: after a
    crash the file is the old one or the new one, never half of either."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=directory_mode, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_in(dir_fd, os.path.basename(path), text, mode)
    finally:
        os.close(dir_fd)


def _write_in(dir_fd: int, name: str, text: str, mode: int) -> None:
    """The atomic write, relative to the directory's fd; the temp file is new (O_EXCL), never a
    planted symlink (O_NOFOLLOW), and goes when the write fails."""
    tmp = TEMP_PREFIX + secrets.token_hex(8)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # whatever the umask
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def save(directory: str, record: dict) -> None:
    write_json(directory, NAME, record)


def unlink_in(directory: str, name: str) -> None:
    """Remove one file of the state directory (none, or no directory: nothing to do)."""
    with contextlib.suppress(FileNotFoundError), _opened(directory) as dir_fd:
        os.unlink(name, dir_fd=dir_fd)


def forget(directory: str) -> None:
    """Remove the record only (the caller holds the lock)."""
    unlink_in(directory, NAME)


def remove(directory: str) -> None:
    """Forget the record and the journal, and the directory when nothing else is in it."""
    for name in (NAME, JOURNAL_NAME, MEMO_NAME, LOCK_NAME):
        unlink_in(directory, name)
    with contextlib.suppress(OSError):
        os.rmdir(directory)
