"""The pure parts of the userland matrix (make userlands): its data, the cache keys, the mount
and network plans, the version parsing, the checkout copy and the table. No root, no chroot."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

from vagrant import chroot, rootfs, userland_guest, userlands
from vagrant import userland_table as table

BOOT = rootfs.Bootstrap("http://deb.debian.org/debian", "minbase", ("ca-certificates", "make", "python3"))


def test_userlands_yaml_names_each_suite_once_with_a_known_engine():
    bootstrap, specs = userlands.load()
    assert {s.suite for s in specs} >= {"bullseye", "bookworm", "trixie", "sid"}
    assert all(s.engine in ("ebpf", "iptables") for s in specs)
    assert bootstrap.mirror.startswith("http://deb.debian.org/") and "ca-certificates" in bootstrap.include
    assert [s.suite for s in userlands.select(specs, "sid,debian12")] == ["bookworm", "sid"]
    with pytest.raises(userlands.UserlandError, match="unknown zz"):
        userlands.select(specs, "zz")


def test_userlands_yaml_errors_name_the_problem(tmp_path):
    bad = tmp_path / "userlands.yaml"
    bad.write_text("debootstrap: {mirror: m, variant: minbase, include: [a]}\n"
                   "userlands:\n  - {name: a, suite: s, engine: nope}\n  - {name: a, suite: t}\n")
    with pytest.raises(userlands.UserlandError) as err:
        userlands.load(str(bad))
    assert "duplicate name a" in str(err.value) and "engine nope" in str(err.value)


def test_debootstrap_arguments_and_their_key():
    assert rootfs.debootstrap_argv(BOOT, "sid", "/c/x") == [
        "debootstrap", "--variant=minbase", "--include=ca-certificates,make,python3", "sid", "/c/x",
        "http://deb.debian.org/debian"]
    key = rootfs.pristine_key(BOOT, "sid")
    assert key == rootfs.pristine_key(BOOT, "sid") and len(key) == 16  # stable, and not the target's
    assert key != rootfs.pristine_key(BOOT, "trixie")
    assert key != rootfs.pristine_key(dataclasses.replace(BOOT, include=("ca-certificates",)), "sid")
    assert key != rootfs.pristine_key(dataclasses.replace(BOOT, mirror="http://other/debian"), "sid")


def test_setup_key_changes_with_setup_pyproject_and_pristine_root_only():
    key = rootfs.setup_key(b"setup", b"project", "p1")
    assert key == rootfs.setup_key(b"setup", b"project", "p1")
    assert len({key, rootfs.setup_key(b"setup!", b"project", "p1"), rootfs.setup_key(b"setup", b"project!", "p1"),
                rootfs.setup_key(b"setup", b"project", "p2")}) == 4
    # parts are hashed apart: moving bytes from one input to the next is another key
    assert rootfs.setup_key(b"ab", b"c", "p") != rootfs.setup_key(b"a", b"bc", "p")


def test_setup_key_of_this_checkout_reads_setup_sh_and_pyproject():
    repo = os.path.dirname(userlands.HERE)
    with open(os.path.join(repo, "scripts", "setup.sh"), "rb") as setup, \
            open(os.path.join(repo, "pyproject.toml"), "rb") as project:
        assert rootfs.setup_key_of(repo, "p") == rootfs.setup_key(setup.read(), project.read(), "p")


def test_mount_plan_makes_the_root_a_mount_point_first_and_keeps_host_paths_out():
    plan = chroot.mount_plan("/c/roots/sid", (("/c/apt/sid", "/var/cache/apt/archives"),), "/sys/fs/cgroup/unified")
    assert plan[0] == ["mount", "--bind", "/c/roots/sid", "/c/roots/sid"]  # for `ip netns`
    targets = [argv[-1] for argv in plan]
    assert all(t.startswith("/c/roots/sid/") for t in targets[1:])  # nothing mounted outside the root
    assert not any("--rbind" in argv or "--make-shared" in argv for argv in plan)  # nothing of the host's /sys
    by_target = {argv[-1]: argv for argv in plan if argv[0] == "mount"}
    assert by_target["/c/roots/sid/proc"][1:4] == ["-t", "proc", "proc"]
    assert by_target["/c/roots/sid/sys"][1:4] == ["-t", "sysfs", "sysfs"]  # this netns's interfaces
    # the hybrid host's layout, with a cgroup2 mount made in the run's cgroup namespace
    assert by_target["/c/roots/sid/sys/fs/cgroup"][1:3] == ["-t", "tmpfs"]
    assert ["mkdir", "-p", "/c/roots/sid/sys/fs/cgroup/unified"] in plan
    assert by_target["/c/roots/sid/sys/fs/cgroup/unified"][1:4] == ["-t", "cgroup2", "cgroup2"]
    for fresh in ("run", "tmp", "dev/shm"):
        assert by_target[f"/c/roots/sid/{fresh}"][1:4] == ["-t", "tmpfs", "tmpfs"]
    assert by_target["/c/roots/sid/dev"][1:3] == ["--bind", "/dev"]  # not --rbind: the host's /dev/shm stays out
    assert by_target["/c/roots/sid/var/cache/apt/archives"] == ["mount", "--bind", "/c/apt/sid",
                                                                 "/c/roots/sid/var/cache/apt/archives"]
    # parents before children
    assert targets.index("/c/roots/sid/sys") < targets.index("/c/roots/sid/sys/fs/cgroup")
    assert targets.index("/c/roots/sid/dev") < targets.index("/c/roots/sid/dev/pts")
    # a unified host: cgroup2 right at /sys/fs/cgroup; no cgroup (debootstrap-like steps): none
    unified = chroot.mount_plan("/r", (), "/sys/fs/cgroup")
    assert ["mount", "-t", "cgroup2", "cgroup2", "/r/sys/fs/cgroup"] in unified
    assert not any("cgroup2" in argv for argv in chroot.mount_plan("/r", (), None))


def test_every_command_runs_in_private_namespaces_that_die_with_this_process():
    argv = chroot.command("/c/logs/x.spec.json", net=True, cgroup="/sys/fs/cgroup/unified/tpctl-userland-sid")
    assert argv[:3] == ["setpriv", "--pdeathsig", "KILL"]
    # --kill-child=SIGTERM: process 1 then ends every process of the run and removes their cgroups
    for flag in ("--mount", "--pid", "--fork", "--kill-child=SIGTERM", "--net", "--cgroup"):
        assert flag in argv
    assert argv[argv.index("--propagation") + 1] == "private"
    assert argv[-2:] == [chroot.__file__.replace(".pyc", ".py"), "/c/logs/x.spec.json"]
    # unshare starts in the run's cgroup, so the cgroup namespace is rooted there
    shell = argv.index("sh")
    assert argv[shell:shell + 4] == ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                                     "/sys/fs/cgroup/unified/tpctl-userland-sid"]
    assert argv[shell + 4] == "unshare"
    plain = chroot.command("/s", net=False)
    assert "--net" not in plain and "--cgroup" not in plain and "sh" not in plain  # set-up needs the host's network
    wrapped = chroot.isolated(["debootstrap", "sid"])
    assert wrapped[-2:] == ["debootstrap", "sid"] and "--mount" in wrapped and "--pid" in wrapped


def test_net_plan_gives_one_up_interface_with_the_address():
    plan = chroot.net_plan(("tpctl-matrix0", "198.18.255.1/24"))
    assert plan[0] == ["ip", "link", "set", "lo", "up"]
    assert ["ip", "link", "add", "tpctl-matrix0p", "type", "veth", "peer", "name", "tpctl-matrix0"] in plan
    assert ["ip", "addr", "add", "198.18.255.1/24", "dev", "tpctl-matrix0"] in plan
    assert all(len(name) <= 15 for argv in plan for name in argv if name.startswith("tpctl-"))


def test_root_env_starts_empty_and_forwards_only_network_settings(tmp_path):
    (tmp_path / "etc/ssl/certs").mkdir(parents=True)
    (tmp_path / "etc/ssl/certs/ca-certificates.crt").write_text("x")
    host = {"PATH": "/root/.pyenv/bin", "HOME": "/root", "https_proxy": "http://p:3128", "PIP_FIND_LINKS": "/opt/w",
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_FILE": "/nowhere.pem", "SECRET": "s"}
    env = chroot.root_env(str(tmp_path), host, {"X": "1"})
    assert env["PATH"] == chroot.ROOT_ENV["PATH"] and env["https_proxy"] == "http://p:3128" and env["X"] == "1"
    assert env["PIP_CERT"] == "/etc/ssl/certs/ca-certificates.crt"  # the root has that bundle
    for absent in ("PIP_FIND_LINKS", "SSL_CERT_FILE", "SECRET"):
        assert absent not in env


def test_each_cache_and_suite_has_a_cgroup_of_its_own():
    names = {userlands.cgroup_name(c, s) for c in ("/a", "/b") for s in ("sid", "trixie")}
    assert len(names) == 4 and all(n.startswith("tpctl-userland-") for n in names)
    assert userlands.cgroup_name("/a", "sid") == userlands.cgroup_name("/a/../a", "sid")


def test_a_runs_cgroup_goes_deepest_first_and_what_cannot_go_is_named(tmp_path):
    run = tmp_path / "tpctl-userland-sid"
    (run / "tpctl-sandbox-1" / "inner").mkdir(parents=True)
    (run / "tpctl-sandbox-2").mkdir()
    assert chroot.remove_cgroup(str(run)) == [] and not run.exists()
    (run / "busy").mkdir(parents=True)
    (run / "busy" / "cgroup.procs").write_text("42\n")  # a plain folder with a file: rmdir refuses, as for a
    problems = chroot.remove_cgroup(str(run))              # cgroup that still holds a process
    assert len(problems) == 2 and problems[0].startswith(f"rmdir {run}/busy: ")
    assert chroot.remove_cgroup(str(tmp_path / "none")) == []


def test_mounts_and_processes_under_a_path(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:20 / /proc rw - proc proc rw\n"
                    "90 1 0:50 / /c/roots/sid rw - ext4 /dev/vda rw\n"
                    "91 90 0:51 / /c/roots/sid/my\\040dir rw - tmpfs tmpfs rw\n"
                    "92 1 0:52 / /c/roots/sidx rw - tmpfs tmpfs rw\n")
    assert chroot.mounts_under("/c/roots/sid", str(info)) == ["/c/roots/sid", "/c/roots/sid/my dir"]
    assert chroot.processes_under(str(tmp_path)) == []  # no process is chrooted in a fresh folder


@pytest.mark.parametrize("version, upstream", [
    ("1:2.6.12-1+deb12u1", "2.6.12"), ("0.26.0+ds-1", "0.26.0"), ("0.18.0+ds-2", "0.18.0"), ("1.8.11-2", "1.8.11"),
    ("3.14.0~rc1-1", "3.14.0"), ("2.9.14", "2.9.14")])
def test_upstream_version(version, upstream):
    assert userland_guest.upstream(version) == upstream


def test_versions_from_tool_output_and_dpkg():
    assert userland_guest.iptables_of("iptables v1.8.9 (nf_tables)\n") == "1.8.9 (nf_tables)"
    assert userland_guest.iptables_of("iptables v1.8.7 (legacy)") == "1.8.7 (legacy)"
    assert userland_guest.iptables_of("iptables: not found") == "?"
    assert userland_guest.haproxy_of("HAProxy version 2.6.12-1+deb12u1 2023/12/16 - https://haproxy.org/") == "2.6.12"
    assert userland_guest.haproxy_of("HA-Proxy version 2.2.9-2+deb11u6 2023/12/08") == "2.2.9"
    assert userland_guest.llvm_of("libc6 (>= 2.34), libclang-cpp14, libllvm14, libstdc++6") == "14"
    assert userland_guest.llvm_of("libclang1-11, libelf1") == "11"
    assert userland_guest.llvm_of("libc6") == "?"
    fields = userland_guest.dpkg_fields("python3-bpfcc\t0.26.0+ds-1\tpython3:any\nhaproxy\t\t\nlibbpfcc\t0.26.0+ds-1\t"
                                        "libllvm14\n")
    assert fields == {"python3-bpfcc": {"version": "0.26.0+ds-1", "depends": "python3:any"},
                      "libbpfcc": {"version": "0.26.0+ds-1", "depends": "libllvm14"}}  # not installed: left out


@pytest.fixture
def checkout(tmp_path):
    if not shutil.which("git"):
        pytest.fail("git not found (fix: apt-get install git; scripts/setup.sh installs it)")
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("a")
    (repo / "untracked.txt").write_text("u")
    (repo / "ignored.log").write_text("i")
    (repo / ".gitignore").write_text("*.log\n.venv/\n")
    os.chmod(repo / "pkg" / "a.py", 0o600)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    subprocess.run(["git", "-C", str(repo), "add", "pkg/a.py", ".gitignore"], check=True, timeout=60)
    return repo


def test_the_checkout_copy_mirrors_git_ls_files_and_keeps_the_venv(checkout, tmp_path):
    root = tmp_path / "root"
    dest = root / rootfs.CHECKOUT.lstrip("/")
    assert rootfs.copy_checkout(str(checkout), str(root)) == 3
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                  if p.is_file() and ".git" not in p.parts) == [".gitignore", "pkg/a.py", "untracked.txt"]
    # the ignored file is not copied; the repository is, so git in the root sees what it sees here
    listed = subprocess.run(["git", "-c", f"safe.directory={dest}", "-C", str(dest), "ls-files", "-co",
                             "--exclude-standard"], capture_output=True, text=True, timeout=60).stdout.split()
    assert sorted(listed) == [".gitignore", "pkg/a.py", "untracked.txt"]
    assert oct((dest / "pkg" / "a.py").stat().st_mode & 0o777) == "0o644"  # uid 5678 reads it
    assert all(oct(p.stat().st_mode & 0o777) == "0o755" for p in (root, root / "srv", dest, dest / "pkg"))
    assert (dest / "pkg" / "a.py").stat().st_mtime_ns == (checkout / "pkg" / "a.py").stat().st_mtime_ns
    (dest / ".venv" / "bin").mkdir(parents=True)
    (dest / ".venv" / "bin" / "python").write_text("venv")
    (dest / "stale.py").write_text("gone from the checkout")
    (checkout / "untracked.txt").unlink()
    (checkout / "pkg" / "a.py").write_text("edited")
    assert rootfs.copy_checkout(str(checkout), str(root)) == 2
    assert (dest / ".venv" / "bin" / "python").read_text() == "venv"
    assert not (dest / "stale.py").exists() and not (dest / "untracked.txt").exists()
    assert (dest / "pkg" / "a.py").read_text() == "edited"


def test_a_long_log_keeps_its_head_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(userlands, "LOG_HEAD", 10)
    monkeypatch.setattr(userlands, "LOG_TAIL", 20)
    source, target = tmp_path / "log", tmp_path / "kept"
    source.write_bytes(b"H" * 10 + b"x" * 1000 + b"T" * 20)
    userlands.trimmed_copy(str(source), str(target))
    assert target.read_bytes() == b"H" * 10 + b"\n[... 1000 bytes cut by vagrant/userlands.py ...]\n" + b"T" * 20
    source.write_bytes(b"short")
    userlands.trimmed_copy(str(source), str(target))
    assert target.read_bytes() == b"short"


RESULT = {"done": True, "versions": {"debian": "12.12", "python": "3.11.2", "bcc": "0.26.0", "llvm": "14",
                                     "iptables": "1.8.9 (nf_tables)", "haproxy": "2.6.12",
                                     "headers": "linux-headers-6.1.0-41-amd64"},
          "choice": {"engine": "ebpf", "failed_checks": []},
          "tests": {"passed": 320, "failed": 0, "skipped": 0, "exit": 0, "seconds": 400.4, "failures": []}}
SETUP = {"exit": 0, "seconds": 212.3, "debootstrap_seconds": 0.0, "problems": []}


def test_rows_and_table():
    ok = table.userland_row("debian12", "bookworm", "ebpf", RESULT, SETUP)
    assert ok.ok and ok.test_seconds == 400.4
    failures = [f"tests/x.py::t{i}" for i in range(10)]
    bad = table.userland_row("sid", "sid", "ebpf", dict(RESULT, choice={"engine": "iptables", "failed_checks": [
        "[FAIL] compile: a|b"]}, tests=dict(RESULT["tests"], passed=300, failed=10, exit=1, failures=failures)),
        dict(SETUP, debootstrap_seconds=151.2))
    no_setup = table.userland_row("debian11", "bullseye", "ebpf", None, dict(SETUP, exit=1))
    skipped = table.userland_row("x", "x", "", dict(RESULT, tests=dict(RESULT["tests"], skipped=1)), SETUP)
    assert not bad.ok and not no_setup.ok and not skipped.ok
    assert "setup.sh exit 1 (see setup.log)" in no_setup.problems
    assert "and 2 more failed (junit.xml)" in bad.problems and "failed: tests/x.py::t7" in bad.problems
    text = table.markdown([ok, bad, no_setup], {"when": "now", "commit": "abc", "kernel": "6.18.0", "tests": []})
    lines = text.splitlines()
    assert ("| debian12 | bookworm (12.12) | 3.11.2 | 0.26.0 (LLVM 14) | 1.8.9 (nf_tables) | 2.6.12 | "
            "linux-headers-6.1.0-41-amd64 | ebpf (ebpf) | every eBPF check passed | 320 / 0 / 0 | cached / 212 / 400 "
            "| ok |") in lines
    sid = next(line for line in lines if line.startswith("| sid |"))
    assert "[FAIL] compile: a\\|b" in sid and "| 151 / 212 / 400 |" in sid and "| iptables (ebpf) |" in sid
    assert "kernel 6.18.0" in text and "(whole suite)" in text
    record = table.as_json([ok], {})
    assert record["ok"] and record["userlands"][0]["ok"]
    assert not table.as_json([ok, bad], {})["ok"] and not table.as_json([], {})["ok"]


def test_update_keeps_the_rows_not_run_now_with_their_run():
    old = dataclasses.replace(table.userland_row("debian11", "bullseye", "ebpf", RESULT, SETUP), run="r1")
    gone = dataclasses.replace(table.userland_row("debian12", "bookworm", "ebpf", None, SETUP), run="r1")
    previous = table.as_json([old, gone], {"when": "r1", "runs": {"r1": {"tests": []}}})
    new = dataclasses.replace(table.userland_row("debian12", "bookworm", "ebpf", RESULT, SETUP), run="r2")
    rows, meta = table.merge(previous, [new], {"runs": {"r2": {"tests": ["tests/unit"]}}},
                             ["debian11", "debian12", "sid"])
    assert [(r.name, r.ok, r.run) for r in rows] == [("debian11", True, "r1"), ("debian12", True, "r2")]
    assert meta["runs"] == {"r1": {"tests": []}, "r2": {"tests": ["tests/unit"]}}
    text = table.markdown(rows, meta)
    assert "Rows from 2 runs" in text and "ok (run r2) |" in text and "`tests/unit`" in text


class _Fake:
    """A userland whose prepare sleeps and whose test records what was in flight."""

    def __init__(self, name, prepare_seconds, log, flight):
        self.name, self.prepare_seconds, self.log, self.flight, self.result = name, prepare_seconds, log, flight, None

    def prepare(self):
        import time
        self.flight.add(self.name)
        self.log.append(("in flight", len(self.flight)))
        time.sleep(self.prepare_seconds)
        self.log.append(("prepared", self.name))
        return self

    def test(self):
        import time
        self.log.append(("test", self.name))
        time.sleep(0.1)
        self.flight.discard(self.name)
        return {"name": self.name}


def test_roots_are_made_beside_the_tests_which_run_one_at_a_time_as_each_root_is_ready():
    log: list = []
    flight: set = set()
    slow, fast, third = _Fake("slow", 0.4, log, flight), _Fake("fast", 0.0, log, flight), _Fake("3rd", 0.0, log, flight)
    userlands.run_all([slow, fast, third], jobs=2)
    steps = [entry for entry in log if entry[0] != "in flight"]
    assert steps[:2] == [("prepared", "fast"), ("test", "fast")]  # ready first, tested first
    assert max(n for what, n in log if what == "in flight") == 2  # never more than --jobs at once
    assert [s for s in steps if s[0] == "test"] == [("test", "fast"), ("test", "3rd"), ("test", "slow")]
    assert slow.result == {"name": "slow"} and third.result == {"name": "3rd"}
    log.clear()
    userlands.run_all([slow, fast], jobs=1)  # one after the other, in userlands.yaml's order
    assert [e for e in log if e[0] != "in flight"] == [("prepared", "slow"), ("test", "slow"), ("prepared", "fast"),
                                                      ("test", "fast")]


def test_with_test_jobs_two_userlands_are_in_their_tests_at_once_and_never_more():
    import threading
    import time

    testing: set = set()
    most = []
    lock = threading.Lock()

    class Tested(_Fake):
        def test(self):
            with lock:
                testing.add(self.name)
                most.append(len(testing))
            time.sleep(0.2)
            with lock:
                testing.discard(self.name)
            return {"name": self.name}

    log: list = []
    flight: set = set()
    four = [Tested(f"u{i}", 0.0, log, flight) for i in range(4)]
    userlands.run_all(four, jobs=4, test_jobs=2)
    assert max(most) == 2 and all(u.result == {"name": u.name} for u in four)


def test_run_gives_the_exit_code_the_time_limit_and_the_cpu_seconds(tmp_path):
    log = str(tmp_path / "log")
    assert chroot.run(["sh", "-c", "echo hi; exit 3"], log, 30) == 3
    usage: dict = {}
    # the CPU of a grandchild counts too (reaped by its parent, then with it): a fixed amount of work
    busy = f"{sys.executable} -c 'sum(i * i for i in range(3_000_000))'; true"
    assert chroot.run(["sh", "-c", busy], log, 30, usage) == 0
    assert usage["cpu_seconds"] >= 0.1
    assert chroot.run(["sleep", "30"], log, 0.5) == 124
    text = open(log).read()
    assert text.startswith("hi\n") and "killed after 0 s: setpriv --pdeathsig KILL sleep 30" in text


def test_prepare_only_sets_up_every_root_at_once_and_tests_none(capsys):
    import types

    class Prepared(_Fake):
        def __init__(self, name, exit_code, log, flight):
            super().__init__(name, 0.1, log, flight)
            self.spec, self.setup = types.SimpleNamespace(suite=name), {"exit": exit_code, "prepare_seconds": 0.1}

        def test(self):  # never: the tests are a later run's
            raise AssertionError("tested")

    log: list = []
    flight: set = set()
    assert userlands.prepare_all([Prepared(f"u{i}", 0, log, flight) for i in range(3)], jobs=3) == 0
    assert max(n for what, n in log if what == "in flight") == 3
    assert "u2: prepared, setup.sh exit 0" in capsys.readouterr().out
    assert userlands.prepare_all([Prepared("ok", 0, log, flight), Prepared("bad", 1, log, flight)], jobs=2) == 1
