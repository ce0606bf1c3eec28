"""Hostile state directories and records (issue 23, items 3 and 5): tpctl acts as root on what
its state directory says, so the directory must be root's and writable by root only, nothing in
it is followed through a symlink or truncated, any record content is named (never a traceback),
uninstall still removes the install when its record is unusable, and a refused install leaves
no state directory at all. Each case runs in the sandbox's namespaces with its own state dirs."""
from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess

import pytest

from engine import journal, state
from engine.errors import ConfigError
from engine.memo import Memo
from engine.state import MAX_RECORD_BYTES
from tests.netns.conftest import install, install_args
from tests.netns.host_view import host_view

ENGINES = ["iptables-nft", "iptables-legacy", "ebpf", "nftables"]
NOT_UTF8 = b'{"version": 1, "engine": "\xff\xfe\xc3\x28", ' + bytes(range(0x80, 0x100)) + b"}\n"


def run(sandbox, state_dir: str, *args: str) -> subprocess.CompletedProcess:
    result = sandbox.tpctl(*args, env={"TPCTL_STATE_DIR": state_dir})
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def refused(sandbox, state_dir: str, *args: str, code: int = 2) -> str:
    result = run(sandbox, state_dir, *args)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    return result.stderr


def test_an_unsafe_state_directory_or_a_planted_lock_is_refused_and_left_as_it_was(sandbox):
    precious = os.path.join(sandbox.tmp, "precious")
    with open(precious, "w", encoding="utf-8") as handle:
        handle.write("root's file\n")
    planted = os.path.join(sandbox.tmp, "planted-lock")
    os.mkdir(planted, 0o700)
    os.symlink(precious, os.path.join(planted, "lock"))
    world = os.path.join(sandbox.tmp, "world-writable")
    os.mkdir(world)
    os.chmod(world, 0o777)
    foreign = os.path.join(sandbox.tmp, "foreign-owned")
    os.mkdir(foreign, 0o700)
    os.chown(foreign, 65534, 65534)
    real = os.path.join(sandbox.tmp, "real")
    os.mkdir(real, 0o700)
    linked = os.path.join(sandbox.tmp, "linked")
    os.symlink(real, linked)

    assert str(os.path.join(planted, "lock")) in refused(sandbox, planted, *install_args("iptables-nft", sandbox))
    refused(sandbox, planted, "uninstall")
    assert open(precious, encoding="utf-8").read() == "root's file\n"  # the lock was never opened through it
    for path, fix in ((world, "chmod 0700"), (foreign, "chown root"), (linked, "symlink")):
        for args in (install_args("iptables-nft", sandbox), ["uninstall"], ["status"], ["status", "--json"]):
            said = refused(sandbox, path, *args)
            assert path in said and fix in said, said
    assert stat.S_IMODE(os.stat(world).st_mode) == 0o777 and os.listdir(world) == []
    assert os.stat(foreign).st_uid == 65534 and os.listdir(foreign) == [] and os.listdir(real) == []

    fresh = os.path.join(sandbox.tmp, "fresh", "state")
    assert run(sandbox, fresh, *install_args("iptables-nft", sandbox)).returncode == 0
    made = os.lstat(fresh)
    assert stat.S_ISDIR(made.st_mode) and made.st_uid == 0 and stat.S_IMODE(made.st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(os.path.join(fresh, "lock")).st_mode) == 0o600
    assert run(sandbox, fresh, "uninstall").returncode == 0 and not os.path.exists(fresh)


def _bad_records(record: dict, state_path: str) -> dict[str, object]:
    """Contents a state file may hold that no install wrote: each must be named, never obeyed."""
    part = record["iptables"]
    return {
        "backend of another name": {**record, "iptables": {**part, "backend": "x"}},
        "rules keyed by no family": {**record, "iptables": {**part, "rules": {"x": ["-A X -j ACCEPT"]}}},
        "chains of the wrong type": {**record, "iptables": {**part, "chains": "TPCTL_OUTBOUND"}},
        "rules of the wrong type": {**record, "iptables": {**part, "rules": [1, 2]}},
        "an engine this tpctl does not have": {**record, "engine": "foreign", "foreign": part},
        "a digest that is a number": {**record, "digest": 5},
        "not UTF-8": NOT_UTF8,
        "too large": MAX_RECORD_BYTES + 1,
        "a FIFO": "fifo",
        "a symlink to a record": "symlink",
    }


def _plant(path: str, content: object, genuine: bytes) -> None:
    os.unlink(path)
    if content == "fifo":
        os.mkfifo(path, 0o600)
    elif content == "symlink":  # a genuine record elsewhere: still never followed
        with open(path + ".elsewhere", "wb") as handle:
            handle.write(genuine)
        os.symlink(path + ".elsewhere", path)
    elif isinstance(content, int):  # sparse: costs no disk
        with open(path, "wb") as handle:
            handle.truncate(content)
    else:
        with open(path, "wb") as handle:
            handle.write(content if isinstance(content, bytes) else json.dumps(content).encode())


def test_records_of_the_wrong_shape_or_kind_are_named_and_uninstall_still_removes_the_install(sandbox):
    before = host_view(sandbox)
    install(sandbox, "iptables-nft")
    path = os.path.join(sandbox.state_dir, "state.json")
    with open(path, "rb") as handle:
        genuine = handle.read()
    for what, content in _bad_records(json.loads(genuine), path).items():
        _plant(path, content, genuine)
        status = run(sandbox, sandbox.state_dir, "status")
        assert status.returncode == 5 and path in status.stdout + status.stderr, (what, status.stdout, status.stderr)
        as_json = run(sandbox, sandbox.state_dir, "status", "--json")
        assert as_json.returncode == 5, (what, as_json.stderr)
        report = json.loads(as_json.stdout)
        assert report["installed"] is False and any(path in d for d in report["drift"]), (what, report["drift"])
    uninstall = run(sandbox, sandbox.state_dir, "uninstall")  # the last one planted: a symlink
    assert uninstall.returncode == 0 and path in uninstall.stderr and "removing what" in uninstall.stderr
    os.unlink(path + ".elsewhere")
    assert host_view(sandbox) == before


def test_a_state_file_of_bytes_that_are_not_utf8_is_named_and_uninstall_removes_every_engine(sandbox):
    every = {engine: install_args(engine, sandbox) for engine in ENGINES}  # mounts the sandbox's bpffs
    before = host_view(sandbox)
    path = os.path.join(sandbox.state_dir, "state.json")
    for engine, args in every.items():
        assert run(sandbox, sandbox.state_dir, *args).returncode == 0, engine
        with open(path, "wb") as handle:
            handle.write(NOT_UTF8)
        for args in (["status"], ["status", "--json"]):
            result = run(sandbox, sandbox.state_dir, *args)
            assert result.returncode == 5 and path in result.stdout + result.stderr, (engine, args, result.stderr)
            assert "not UTF-8" in result.stdout + result.stderr
        uninstall = run(sandbox, sandbox.state_dir, "uninstall")
        assert uninstall.returncode == 0 and path in uninstall.stderr, (engine, uninstall.stderr)
        assert host_view(sandbox) == before, engine


def test_refused_installs_leave_no_state_directory_lock_or_cache(sandbox):
    """Exit 3 (eBPF cannot honour the flags, --no-fallback) and exit 2 (bad input) change nothing."""
    ebpf = install_args("ebpf", sandbox)
    iface = ebpf.index("--ebpf-tc-attach-iface") + 1
    uids = ";".join(f"tcp:{2000 + n}:{3000 + n}" for n in range(17))  # one more than eBPF's map holds
    unsupported = [
        [*ebpf[:iface], "tpnosuch0", *ebpf[iface + 1:]],
        [*ebpf, "--iptables-logs"],
        [*ebpf, "--drop-invalid-packets"],
        [*ebpf, "--exclude-outbound-ports-for-uids", uids],
    ]
    bad_input = [
        install_args("iptables-nft", sandbox, "--redirect-outbound-port", "99999"),
        install_args("iptables-nft", sandbox, "--config", os.path.join(sandbox.tmp, "no-such.yaml")),
        [*ebpf, "--ebpf-instance-ip", "198.18.0.1%eth0"],
    ]
    for args in unsupported:
        refused(sandbox, sandbox.state_dir, *args, code=3)
        assert not os.path.exists(sandbox.state_dir), args
    for args in bad_input:
        refused(sandbox, sandbox.state_dir, *args, code=2)
        assert not os.path.exists(sandbox.state_dir), args
    assert run(sandbox, sandbox.state_dir, *ebpf, "--dry-run").returncode == 0
    assert not os.path.exists(sandbox.state_dir)


# Fast cases without root or namespaces: the readers and the directory checks on a temp dir.

def _state_dir(tmp_path) -> str:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return str(path)


def test_every_file_kind_and_content_a_reader_refuses_is_named(tmp_path):
    directory = _state_dir(tmp_path)
    path = os.path.join(directory, "state.json")
    kinds = {"a FIFO": lambda: os.mkfifo(path), "a symlink": lambda: os.symlink(str(tmp_path / "elsewhere"), path),
             "not UTF-8": lambda: open(path, "wb").write(NOT_UTF8),
             "too large": lambda: open(path, "wb").truncate(MAX_RECORD_BYTES + 1),
             "nested too deep": lambda: open(path, "w").write("[" * 200_000 + "]" * 200_000)}
    (tmp_path / "elsewhere").write_text('{"version": 1, "engine": "iptables", "iptables": {}}')
    for what, make in kinds.items():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        make()
        record, problem = state.read(directory)
        assert record is None and problem and path in problem, (what, problem)
    assert state.read(str(tmp_path / "absent")) == (None, None)


def test_records_are_type_checked_where_they_are_read(tmp_path):
    directory = _state_dir(tmp_path)
    good = {"engine": "nftables", "digest": "d", "choice": {}, "config": {}, "nftables": {"chains": {"c": 1}}}
    bad = [{**good, "engine": 7}, {**good, "engine": "foreign"}, {**good, "nftables": []}, {**good, "choice": "x"},
           {**good, "ipv6_passthrough_added": "yes"}]
    for record in bad:
        state.save(directory, record)
        assert state.read(directory)[0] is None and "state.json" in str(state.read(directory)[1]), record
    journal.write(directory, True, None, [good, bad[1]])
    found, problem = journal.read(directory)
    assert found is not None and found["installs"] == [{**good}] and "install 1" in str(problem)
    assert state.shape_problem({"a": [1, "x"]}, {"a": [int]}) == "record.a[1] is a str, not int"
    assert state.shape_problem({"a": True}, {"a": int}) and state.shape_problem({"m": {"k": 1}}, {"m": {"*": int}}) is None


def test_unsafe_directories_and_planted_locks_are_refused_and_nothing_is_made_early(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    os.chmod(world, 0o777)
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(str(tmp_path / "real"), str(tmp_path / "link"))
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)  # no sticky bit: anyone could swap the state dir inside it
    for unsafe in (world, tmp_path / "link", open_parent / "state"):
        with pytest.raises(ConfigError, match=str(unsafe)):
            state.check_dir(str(unsafe))
        with pytest.raises(ConfigError), state.locked(str(unsafe)):
            pass
    assert not os.path.exists(open_parent / "state") and os.listdir(world) == []
    planted = _state_dir(tmp_path)
    (tmp_path / "precious").write_text("keep")
    os.symlink(str(tmp_path / "precious"), os.path.join(planted, "lock"))
    with pytest.raises(ConfigError, match="lock"), state.locked(planted):
        pass
    assert (tmp_path / "precious").read_text() == "keep"
    fresh = str(tmp_path / "a" / "fresh")
    memo = Memo(fresh, hold=True)
    memo.put("ebpf", "k", [1])
    assert memo.get("ebpf", "k") == [1] and not os.path.exists(fresh)  # held: a refusal writes nothing
    with state.locked(fresh):
        memo.save()
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700 and Memo(fresh).get("ebpf", "k") == [1]
    assert stat.S_IMODE(os.stat(os.path.join(fresh, "lock")).st_mode) == 0o600
