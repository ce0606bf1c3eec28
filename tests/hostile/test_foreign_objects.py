"""Uninstall destroys only what it can prove is its own (issue 23): records are hints, the kernel
object is the proof. Each privileged case attacks a real install in throwaway namespaces, a
child cgroup and private bpffs mounts, and compares the foreign objects byte for byte."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import ebpf.settings
from ebpf import pins
from engine import state
from engine.nftables import nft
from tests.netns.conftest import install, install_args

# `ip nat` too: nft stops at a command that fails, so the injected one runs only after a good one
VICTIM_TABLE = "table ip nat {\n}\ntable inet victim {\n\tchain c {\n\t\ttcp dport 4242 accept\n\t}\n}\n"
HOSTILE_TABLE_NAME = "nat; delete table inet victim"
FOREIGN_FILTER = ["protocol", "all", "pref", "7", "bpf", "bytecode", "1,6 0 0 0,", "classid", "1:1"]


# -- pure: the grammar and the mount-point rules ------------------------------------------------

@pytest.mark.parametrize("name", [HOSTILE_TABLE_NAME, "tpctl\n", "", "a b", "x" * 65, "t{", 'q"', None, 7])
def test_a_name_outside_the_grammar_never_becomes_an_nft_command(name):
    assert not nft.valid_name(name)
    with pytest.raises(nft.NftError):
        nft.command("delete", "table", "inet", name)  # type: ignore[arg-type]


def test_a_name_in_the_grammar_makes_one_command_line():
    assert nft.command("delete", "table", "inet", "tpctl") == "delete table inet tpctl\n"
    with pytest.raises(nft.NftError):
        nft.command("delete", "table", "inet; flush ruleset", "tpctl")


def test_a_bpffs_is_never_mounted_over_files_through_a_symlink_or_on_a_file(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    (tmp_path / "empty").mkdir()
    os.symlink(tmp_path / "empty", tmp_path / "link")
    (tmp_path / "file").write_text("")
    assert "non-empty directory" in (pins.mount_point_problem(str(full)) or "")
    assert "symlink" in (pins.mount_point_problem(str(tmp_path / "link" / "sub")) or "")
    assert "not a directory" in (pins.mount_point_problem(str(tmp_path / "file")) or "")
    assert pins.mount_point_problem(str(tmp_path / "empty")) is None
    assert pins.mount_point_problem(str(tmp_path / "absent" / "bpffs")) is None
    shared = tmp_path / "shared"  # anyone may swap a name in it for a symlink before the mount
    shared.mkdir()
    shared.chmod(0o777)
    for path in (shared / "bpffs", shared / "absent" / "bpffs"):
        assert "writable by others" in (pins.mount_point_problem(str(path)) or "")
    with pytest.raises(pins.BpffsPathError, match="--ebpf-bpffs-path"):
        pins.mount_bpffs(str(full))
    assert os.listdir(full) == ["keep"]


# -- privileged: hostile records against a real install -----------------------------------------

def _ns(sandbox, *argv: str) -> str:
    result = subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.app}", *argv], capture_output=True, text=True,
                            timeout=30)
    return result.stdout + result.stderr


def _tc(sandbox, *argv: str) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.app}", "tc", *argv], check=True, timeout=30)


def _tree(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, n), path) for root, dirs, files in os.walk(path)
                  for n in dirs + files)


def _mounts(paths: list[str]) -> list[str]:
    """mountinfo lines (mount id, device, point, type) of the test's mount points."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        lines = [line.split(" ") for line in handle]
    return [" ".join(f[:3] + [f[4], f[f.index("-") + 1]]) for f in lines if f[4] in paths]


def host_view(sandbox, paths: list[str]) -> dict:
    """Everything a hostile record could make uninstall destroy, in the sandbox."""
    return {
        "tc": {d: _ns(sandbox, "tc", "filter", "show", "dev", sandbox.app_if, d) for d in ("ingress", "egress")},
        "qdiscs": _ns(sandbox, "tc", "qdisc", "show", "dev", sandbox.app_if),
        "cgroup": subprocess.run(["bpftool", "cgroup", "show", sandbox.cgroup], capture_output=True, text=True,
                                 timeout=30).stdout,
        "nft": _ns(sandbox, "nft", "list", "ruleset"),
        "mounts": _mounts(paths),
        "files": {p: _tree(p) for p in paths},
    }


# syscalls that change the kernel or a file: rtnetlink RTM_{NEW,DEL}{LINK,ADDR,QDISC,TFILTER} (strace
# prints their numbers; pyroute2 sends with sendto, nft's batches go by sendmsg and are compared as
# rulesets), bpf attach/detach/pin, mounts, unlinks, and the netfilter restore tools
CHANGING = re.compile(r"sendto\(.*nlmsg_type=0x(1[0145]|2[45cd])\b|BPF_PROG_(DE)?TACH|BPF_OBJ_PIN|\b(u?mount2?|unlink(at)?|rmdir|"
                      r"renameat2?)\(|execve\(\"[^\"]*-restore\"")


def changing_calls(sandbox, *args: str, env: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run tpctl under strace -f: its result and every syscall it made that changes something."""
    log = os.path.join(sandbox.tmp, "strace.log")
    argv = sandbox.command(sandbox.app, [sys.executable, "-m", "engine.cli", *args])
    full_env = {**os.environ, "TPCTL_STATE_DIR": sandbox.state_dir, "TPCTL_PERSIST_ROOT": sandbox.persist_root,
                "PYTHONDONTWRITEBYTECODE": "1", **env}
    result = subprocess.run(["strace", "-f", "-qq", "-s", "64", "-o", log, "-e",
                             "trace=execve,sendto,sendmsg,bpf,mount,umount2,unlink,unlinkat,rmdir,rename,renameat2",
                             *argv], capture_output=True, text=True, env=full_env, timeout=180)
    with open(log, encoding="utf-8", errors="replace") as handle:
        return result, [line.strip() for line in handle if CHANGING.search(line)]


def _write_records(directory: str, record: dict, journal: list[dict]) -> None:
    os.makedirs(directory, mode=0o700)
    for name, body in (("state.json", {**record, "version": state.VERSION}), ("journal.json",
                                                {"committed": True, "step": None, "installs": journal,
                                                 "version": state.VERSION})):
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle)


def _mounted_bpffs(sandbox, name: str, mounted: list[str]) -> str:
    """A bpffs the test mounts (listed in `mounted` first, for the finally that unmounts it)."""
    path = os.path.join(sandbox.tmp, name)
    os.mkdir(path)
    mounted.append(path)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, timeout=30)
    return path


def _umount_all(paths: list[str]) -> None:
    for path in paths:
        for _ in range(8):  # stacked mounts, one layer a time
            if not pins.is_bpffs(path) or subprocess.run(["umount", path], capture_output=True, timeout=30).returncode:
                break


def _hostile_records(real: dict, foreign_bpffs: str, linked_bpffs: str) -> tuple[dict, list[dict]]:
    """A state record naming the real install's programs, tc filters and clsact, and a bpffs tpctl
    did not mount; a journal naming a bpffs whose tpctl/ is a symlink and a table outside the
    grammar."""
    ebpf = dict(real["ebpf"], bpffs_path=foreign_bpffs, pin_dir=os.path.join(foreign_bpffs, "tpctl"),
                bpffs_mounted_by_us=True, pins=[])
    ebpf["tc"] = dict(ebpf["tc"], clsact_created=True)
    linked = {"engine": "ebpf", "ebpf": {"bpffs_path": linked_bpffs, "bpffs_mounted_by_us": True,
                                         "pin_dir": os.path.join(linked_bpffs, "tpctl"), "prog_ids": {}}}
    table = {"engine": "nftables", "nftables": {"table": HOSTILE_TABLE_NAME, "families": [4]}}
    return {**real, "ebpf": ebpf}, [linked, table]


def test_hostile_records_destroy_nothing_foreign_and_an_engine_switch_keeps_foreign_filters(sandbox):
    """Another tool's filters on the clsact tpctl made; another install's programs, filters and
    clsact named by a record; a bpffs tpctl did not mount; a bpffs whose tpctl/ is a symlink to a
    directory of files; a table name outside the grammar. --dry-run (strace as the witness) and
    the real uninstall leave all of it byte for byte; each refusal is said on stderr. Then an
    engine switch and its uninstall remove tpctl's filters and leave the foreign ones."""
    install(sandbox, "ebpf")
    with open(os.path.join(sandbox.state_dir, "state.json"), encoding="utf-8") as handle:
        real = json.load(handle)
    for direction in ("ingress", "egress"):  # another tool's filters on the clsact tpctl created
        _tc(sandbox, "filter", "add", "dev", sandbox.app_if, direction, *FOREIGN_FILTER)
    subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.app}", "nft", "-f", "/dev/stdin"], input=VICTIM_TABLE,
                   text=True, check=True, timeout=30)
    victim = os.path.join(sandbox.tmp, "victim")
    os.mkdir(victim)
    for name in ("a", "b"):
        with open(os.path.join(victim, name), "w") as handle:
            handle.write(name)
    mounted: list[str] = []
    try:
        foreign_bpffs = _mounted_bpffs(sandbox, "foreign-bpffs", mounted)
        linked_bpffs = _mounted_bpffs(sandbox, "linked-bpffs", mounted)
        os.symlink(victim, os.path.join(linked_bpffs, "tpctl"))
        hostile_dir = os.path.join(sandbox.tmp, "hostile-state")
        _write_records(hostile_dir, *_hostile_records(real, foreign_bpffs, linked_bpffs))
        watched = [sandbox.bpffs, foreign_bpffs, linked_bpffs, victim]
        before = host_view(sandbox, watched)
        hostile = {"TPCTL_STATE_DIR": hostile_dir}

        for args in (["uninstall", "--dry-run"], *([*install_args(engine, sandbox), "--dry-run"]
                                                   for engine in ("ebpf", "nftables", "iptables-nft"))):
            dry, changes = changing_calls(sandbox, *args, env=hostile if args[0] == "uninstall" else {})
            assert dry.returncode == 0, dry.stderr
            assert not changes, f"{args} made changing calls:\n" + "\n".join(changes)
        assert host_view(sandbox, watched) == before, "a --dry-run changed the host"
        done = sandbox.tpctl("uninstall", env=hostile)
        assert host_view(sandbox, watched) == before, done.stderr
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        for named in ("tp_sock4_connect", "clsact", foreign_bpffs, "symlink", HOSTILE_TABLE_NAME):
            assert named in done.stderr, f"{named!r} not reported:\n{done.stderr}"
        status = sandbox.tpctl("status")
        assert status.returncode == 0, status.stdout + status.stderr  # the real install: every hook attached

        foreign_only = {d: "".join(line for line in listing.splitlines(True) if " pref 7 " in line)
                        for d, listing in before["tc"].items()}
        assert all(foreign_only.values()) and foreign_only != before["tc"]
        switch = sandbox.tpctl(*install_args("nftables", sandbox))
        assert switch.returncode == 0, switch.stderr
        after_switch = host_view(sandbox, watched)
        assert after_switch["tc"] == foreign_only and "clsact" in after_switch["qdiscs"]
        gone = sandbox.tpctl("uninstall")
        assert gone.returncode == 0, gone.stderr
        after = host_view(sandbox, watched)
        assert after["tc"] == foreign_only and after["qdiscs"] == before["qdiscs"]
        ours_gone = [x for x in before["files"][sandbox.bpffs] if not x.startswith("tpctl")]
        assert after["nft"] == before["nft"] and after["files"] == {**before["files"], sandbox.bpffs: ours_gone}
        assert after["mounts"] == before["mounts"] and "tp_" not in after["cgroup"]
    finally:
        _umount_all(mounted)


def test_a_table_name_from_a_record_never_reaches_nft_as_a_command(sandbox):
    """nft joins its argv and parses it: `list table ip <name>` with this name was a second command,
    run even by `uninstall --dry-run`. Records of both nf_tables writers name it."""
    subprocess.run(["nsenter", f"--net=/run/netns/{sandbox.app}", "nft", "-f", "/dev/stdin"], input=VICTIM_TABLE,
                   text=True, check=True, timeout=30)
    scaffold = {"tables": [HOSTILE_TABLE_NAME], "chains": [[HOSTILE_TABLE_NAME, "OUTPUT"]]}
    records = [{"engine": "iptables", "iptables": {"backend": "nft", "nft_created": {"4": scaffold, "6": scaffold}}},
               {"engine": "nftables", "nftables": {"table": HOSTILE_TABLE_NAME, "families": [4]}}]
    hostile_dir = os.path.join(sandbox.tmp, "hostile-state")
    _write_records(hostile_dir, records[0], records[1:])
    before = _ns(sandbox, "nft", "list", "ruleset")
    for args in (["--dry-run"], []):
        result = sandbox.tpctl("uninstall", *args, env={"TPCTL_STATE_DIR": hostile_dir})
        assert _ns(sandbox, "nft", "list", "ruleset") == before, f"uninstall {args}: {result.stderr}"
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert HOSTILE_TABLE_NAME in result.stderr, result.stderr


def test_a_bpffs_path_over_files_or_through_a_symlink_is_a_failed_check_never_a_mount(sandbox):
    full = os.path.join(sandbox.tmp, "full")
    os.mkdir(full)
    with open(os.path.join(full, "keep"), "w") as handle:
        handle.write("mine")
    empty = os.path.join(sandbox.tmp, "empty")
    os.mkdir(empty)
    link = os.path.join(sandbox.tmp, "link")
    os.symlink(empty, link)
    mounted = [full, empty]  # never mounted by a correct tpctl; unmounted should one have been
    try:
        linked_bpffs = _mounted_bpffs(sandbox, "linked-bpffs", mounted)  # its tpctl/: a symlink to files
        os.symlink(full, os.path.join(linked_bpffs, "tpctl"))
        for path in (full, link, linked_bpffs):
            args = install_args("ebpf", sandbox, "--ebpf-bpffs-path", path)
            refused = sandbox.tpctl(*args)
            assert refused.returncode == 3, refused.stderr  # install_args carries --no-fallback
            assert path in refused.stderr and "fix" in refused.stderr.lower()
            fallback = sandbox.tpctl(*[a for a in args if a != "--no-fallback"], "--dry-run")
            assert fallback.returncode == 0 and "falling back to iptables" in fallback.stderr, fallback.stderr
            assert not pins.is_bpffs(full) and not pins.is_bpffs(empty)
        assert os.listdir(full) == ["keep"] and not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))
    finally:
        _umount_all(mounted)


def test_an_ebpf_dry_run_with_no_bpffs_yet_mounts_nothing_and_makes_no_directory(sandbox):
    """The feature check that bpffs can be mounted runs in a child's private mount namespace:
    the dry run's strace shows no mount or unmount of its own, and the path is not created."""
    path = os.path.join(sandbox.tmp, "not-yet-bpffs")
    args = install_args("ebpf", sandbox, "--dry-run")
    args[args.index("--ebpf-bpffs-path") + 1] = path
    dry, changes = changing_calls(sandbox, *args, env={})
    assert dry.returncode == 0, dry.stderr
    with open(os.path.join(sandbox.tmp, "strace.log"), encoding="utf-8", errors="replace") as handle:
        private = {line.split()[0] for line in handle if 'execve("/usr/bin/unshare"' in line
                   or ("unshare" in line and "--mount" in line)}
    mounts = [c for c in changes if "mount" in c]
    assert mounts, "the check mounted nowhere: nothing was proved"
    assert all(c.split()[0] in private for c in mounts), "\n".join(mounts)
    assert not os.path.exists(path) and not os.path.exists(sandbox.state_dir)


def test_programs_swapped_in_before_a_kill_are_pinned_so_uninstall_proves_and_detaches_them(sandbox):
    """With the pins as the only proof, a replacement pins each new program before it attaches it:
    a SIGKILL right after a swap leaves nothing attached that uninstall cannot prove its own."""
    install(sandbox, "ebpf")
    changed = os.path.join(sandbox.tmp, "bpf_src_changed")
    shutil.copytree(ebpf.settings.DEFAULT_SOURCE_PATH, changed)
    with open(os.path.join(changed, "tp_connect.c"), "a", encoding="utf-8") as handle:
        handle.write("/* a newer tpctl */\n")
    killed = sandbox.tpctl(*install_args("ebpf", sandbox, "--ebpf-programs-source-path", changed),
                           env={"TPCTL_SIGNAL_IN_STEP": "replace:tp_sock4_connect:KILL"})
    assert killed.returncode in (-9, 137), killed.stderr
    assert any(name.endswith(pins.NEXT) for name in pins.list_pins(sandbox.bpffs))
    result = sandbox.tpctl("uninstall")
    assert result.returncode == 0, result.stderr
    left = host_view(sandbox, [sandbox.bpffs])
    assert "tp_" not in left["cgroup"] and "tp_" not in "".join(left["tc"].values()), left
    assert not [x for x in left["files"][sandbox.bpffs] if x.startswith("tpctl")], left
