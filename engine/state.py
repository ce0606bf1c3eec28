"""State: what install made, recorded atomically under a lock.

The file (default /run/tpctl/state.json; TPCTL_STATE_DIR or --state-dir move it) is written
to a temporary file and renamed, under flock, so a crash never leaves half a record and two
tpctl processes never interleave. Uninstall and status read it; every object also carries an
ownership tag, so both still work when the file is gone.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator

DEFAULT_DIR = "/run/tpctl"
STATE_ENV = "TPCTL_STATE_DIR"
VERSION = 1


def state_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get(STATE_ENV) or DEFAULT_DIR


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold the state lock for the whole install/uninstall."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, "lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def load(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, "state.json"), encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable: uninstall falls back to ownership tags
    # a JSON array or scalar is as unreadable as garbage: uninstall falls back to the tags
    return record if isinstance(record, dict) and record.get("version") == VERSION else None


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


def save(directory: str, record: dict) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({**record, "version": VERSION}, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(directory, "state.json"))


def forget(directory: str) -> None:
    """Remove the record only (the caller holds the lock)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, "state.json"))


def remove(directory: str) -> None:
    """Forget the record, and the directory when nothing else is in it."""
    for name in ("state.json", "lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)
