"""State: what install made, recorded atomically under a lock.

The file (default /run/tpctl/state.json; TPCTL_STATE_DIR or --state-dir move it) is written
to a temporary file, fsync'd and renamed, under flock, so a crash never leaves half a record and
two tpctl processes never interleave. Uninstall and status read it; the journal beside it
(engine/journal.py) and every object's ownership tag let both work when the file is gone or
damaged.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import os
import tempfile
from collections.abc import Iterator

DEFAULT_DIR = "/run/tpctl"
STATE_ENV = "TPCTL_STATE_DIR"
VERSION = 1
NAME = "state.json"
JOURNAL_NAME = "journal.json"  # engine/journal.py
MEMO_NAME = "checks.json"  # engine/memo.py
TEMP_PREFIX = ".tmp."  # atomic writes in progress; one left behind is a crash's, removed next time


def state_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get(STATE_ENV) or DEFAULT_DIR


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold the state lock for the whole install/uninstall; temp files of a crashed write go."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, "lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for stale in glob.glob(os.path.join(directory, TEMP_PREFIX + "*")) + \
                glob.glob(os.path.join(directory, ".state.*")):  # the prefix before 2026-12
            with contextlib.suppress(OSError):
                os.unlink(stale)
        yield


def read_json(path: str, what: str) -> tuple[dict | None, str | None]:
    """(record, None), (None, None) when there is no file, or (None, why it is unusable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"the {what} {path} cannot be read ({err.strerror})"
    try:
        record = json.loads(text)
    except ValueError as err:
        return None, f"the {what} {path} is not JSON ({'empty' if not text.strip() else err})"
    if not isinstance(record, dict):
        return None, f"the {what} {path} holds a JSON {type(record).__name__}, not a record"
    if record.get("version") != VERSION:
        return None, f"the {what} {path} has version {record.get('version')!r}, this tpctl reads {VERSION}"
    return record, None


def read(directory: str) -> tuple[dict | None, str | None]:
    """The state record, and why it is unusable when it is there but damaged."""
    record, problem = read_json(os.path.join(directory, NAME), "state file")
    if record is not None and not is_install_record(record):
        return None, (f"the state file {os.path.join(directory, NAME)} names engine {record.get('engine')!r} "
                      "without that engine's record")
    return record, problem


def is_install_record(record: object) -> bool:
    """An install record names its engine and holds that engine's part (the state file's and
    each of the journal's)."""
    return isinstance(record, dict) and isinstance(record.get("engine"), str) and \
        isinstance(record.get(record["engine"]), dict)


def load(directory: str) -> dict | None:
    """The state record; None when there is none or it is damaged (read() says why)."""
    return read(directory)[0]


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
    # one json.dumps without indent: the C encoder (json.dump and indent take the Python one,
    # 10x slower for an install with 20,000 exclusions, written at every step); status --json
    # is the readable view
    write_atomically(os.path.join(directory, name), json.dumps({**record, "version": VERSION}, sort_keys=True) + "\n")


def write_atomically(path: str, text: str, mode: int = 0o600, directory_mode: int = 0o700) -> None:
    """A temp file beside `path`, fsync'd, renamed over it, and the directory fsync'd: after a
    crash the file is the old one or the new one, never half of either."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=directory_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fchmod(handle.fileno(), mode)
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(directory: str, record: dict) -> None:
    write_json(directory, NAME, record)


def forget(directory: str) -> None:
    """Remove the record only (the caller holds the lock)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, NAME))


def remove(directory: str) -> None:
    """Forget the record and the journal, and the directory when nothing else is in it."""
    for name in (NAME, JOURNAL_NAME, MEMO_NAME, "lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)
