"""The pure parts of the kernel matrix: package index parsing, the QEMU/virtme command line, the
KVM/TCG decision, what the guest reads from tpctl and pytest, and the table. No VM is booted."""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess

import pytest

from engine import config as config_module
from engine import values
from engine.choice import Check, choose
from engine.probe import Backend, HostFacts
from vagrant import boot, box, guest, kernels, matrix, table

CONTROL = """Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.158+1)
Version: 6.1.158-1
Depends: linux-image-6.1.0-41-amd64 (= 6.1.158-1)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel.

Package: linux-image-amd64
Version: 6.1.0-old
"""


def test_control_fields_of_the_first_stanza_and_the_versioned_image():
    fields = kernels.parse_control(CONTROL)
    assert fields["Version"] == "6.1.158-1"
    assert fields["Description"].endswith("latest Linux kernel.")
    assert kernels.versioned_dependency(fields["Depends"], "linux-image-") == "linux-image-6.1.0-41-amd64"
    with pytest.raises(kernels.MatrixError):
        kernels.versioned_dependency("linux-image-amd64, initramfs-tools", "linux-image-")


# sid's 7.x packaging: the image package is empty and depends on the parts of the same release
SID_IMAGE = """Package: linux-image-7.2.13+deb14-amd64
Version: 7.2.13-1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1) | apparmor
"""
SID_META_DEPENDS = "linux-base-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-amd64 (= 7.2.13-1)"


def test_the_release_parts_of_split_and_whole_image_packages():
    assert (kernels.versioned_dependency(SID_META_DEPENDS, "linux-image-") == "linux-image-7.2.13+deb14-amd64")
    depends = kernels.parse_control(SID_IMAGE)["Depends"]
    assert kernels.release_parts(depends, "7.2.13+deb14-amd64") == [
        "linux-base-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"]
    # bookworm's linux-image-<release> holds everything itself: no parts, linux-base is not this release's
    assert kernels.release_parts("kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | "
                                 "linux-initramfs-tool", "6.1.0-50-amd64") == []


def test_private_apt_never_reads_the_hosts_sources_or_state(tmp_path):
    options = " ".join(kernels.PrivateApt("bullseye", str(tmp_path)).options())
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State", "Dir::State::status", "Dir::Cache"):
        assert f"{key}={tmp_path}/apt/bullseye/" in options
    assert "Check-Valid-Until" not in options  # stable suites keep apt's date check


def test_private_apt_skips_only_the_date_check_where_asked(tmp_path):
    options = kernels.PrivateApt("sid", str(tmp_path), check_valid_until=False).options()
    assert options[-2:] == ["-o", "Acquire::Check-Valid-Until=false"]
    assert not any("AllowInsecure" in o or "Check-Date" in o or "trusted" in o for o in options)


def test_an_expired_release_file_names_the_kernels_yaml_fix(tmp_path, monkeypatch):
    expired = ("E: Release file for http://deb.debian.org/debian/dists/sid/InRelease is expired "
               "(invalid since 25d 0h 46min). Updates for this repository will not be applied.")
    monkeypatch.setattr(kernels.subprocess, "run",
                        lambda argv, **kw: subprocess.CompletedProcess(argv, 100, "", expired))
    with pytest.raises(kernels.MatrixError, match="fix: `check_valid_until: false` for the sid kernel"):
        kernels.PrivateApt("sid", str(tmp_path))._run(["apt-get", "update"], "apt-get update", 5)


def test_kernel_paths_follow_debian_packaging(tmp_path):
    spec = kernels.KernelSpec("k", "bookworm", "6.1", "ebpf", True, "max")
    (tmp_path / "usr/lib/modules/6.1.0-9-amd64").mkdir(parents=True)
    k = kernels.Kernel(spec, "6.1.0-9-amd64", str(tmp_path), ())
    assert k.image == f"{tmp_path}/boot/vmlinuz-6.1.0-9-amd64"
    assert k.moddir == f"{tmp_path}/usr/lib/modules/6.1.0-9-amd64"
    assert k.headers == (f"{tmp_path}/usr/src/linux-headers-6.1.0-9-amd64",
                         f"{tmp_path}/usr/src/linux-headers-6.1.0-9-common")


def test_kernel_image_of_the_7x_packaging_is_under_usr_lib_modules(tmp_path):
    spec = kernels.KernelSpec("k", "sid", "7.2", "ebpf", True, "max,-cx16", check_valid_until=False)
    release = "7.2.13+deb14-amd64"
    moddir = tmp_path / "usr/lib/modules" / release
    moddir.mkdir(parents=True)
    k = kernels.Kernel(spec, release, str(tmp_path), ())
    assert k.image == f"{tmp_path}/boot/vmlinuz-{release}"  # neither there: the name the error gives
    (moddir / "vmlinuz").write_bytes(b"")  # linux-binary-<release>
    assert k.image == f"{moddir}/vmlinuz" and k.moddir == str(moddir)
    assert k.headers == (f"{tmp_path}/usr/src/linux-headers-{release}",
                         f"{tmp_path}/usr/src/linux-headers-7.2.13+deb14-common")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinuz-{release}").write_bytes(b"")  # the older layout wins when both are there
    assert k.image == f"{tmp_path}/boot/vmlinuz-{release}"


def _guest(accel: str, cpu: str = "max,-cx16") -> boot.Guest:
    return boot.Guest("/k/vmlinuz", "/runs/x", "cd /repo && exec py -m vagrant.guest /runs/x/job.json", accel, cpu,
                      kernel_args=(boot.LEGACY_CGROUPS,))


def test_tcg_command_line_hides_cx16_and_shares_the_root_read_only_twice():
    argv = boot.command(_guest("tcg"), virtme_run="virtme-run")
    assert argv[:5] == ["virtme-run", "--kimg", "/k/vmlinuz", "--mods", "auto"]
    assert "--disable-kvm" in argv and "--force-9p" in argv and "--rw" not in argv
    assert argv[argv.index("--rwdir") + 1] == "/runs/x"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-a"][-1] == boot.LEGACY_CGROUPS
    opts = argv[argv.index("--qemu-opts") + 1:]  # swallows the rest: must be last
    assert opts == ["-virtfs", boot.CACHED_ROOT, "-cpu", "max,-cx16"]
    assert "readonly=on" in boot.CACHED_ROOT and f"mount_tag={boot.CACHED_ROOT_TAG}" in boot.CACHED_ROOT


def test_the_kernel_console_goes_to_the_log_with_errors_and_panics():
    argv = boot.command(_guest("tcg"), virtme_run="virtme-run")
    assert "--show-boot-console" in argv[:argv.index("--script-sh")]
    kernel_args = [argv[i + 1] for i, a in enumerate(argv) if a == "-a"]
    assert kernel_args == [boot.KERNEL_LOGLEVEL, boot.LEGACY_CGROUPS] and boot.KERNEL_LOGLEVEL == "loglevel=4"


def test_console_log_keeps_every_writer_that_reopens_its_stdout(tmp_path, monkeypatch):
    """QEMU's file chardevs reopen /proc/self/fd/1 and /2 with O_TRUNC: on a regular file each cut
    the log; through the pipe every line stays, the command line first."""
    script = ("echo from-stdout > /proc/self/fd/1; echo from-stderr > /proc/self/fd/2; "
              "echo again > /proc/self/fd/1")
    monkeypatch.setattr(boot, "command", lambda guest: ["sh", "-c", script])
    booted = boot.run(boot.Guest("/k", str(tmp_path), "true", "tcg"), timeout=30)
    text = (tmp_path / "console.log").read_text()
    assert booted.returncode == 0 and text.splitlines() == ["$ sh -c " + shlex.quote(script), "from-stdout",
                                                          "from-stderr", "again"]


def test_a_guest_past_its_time_is_killed_and_the_log_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(boot, "command", lambda guest: ["sh", "-c", "echo booting; exec sleep 60"])
    booted = boot.run(boot.Guest("/k", str(tmp_path), "true", "tcg"), timeout=1)
    text = (tmp_path / "console.log").read_text()
    assert booted.returncode is None and booted.seconds < 30 and not boot.RUNNING
    assert "booting\n" in text and "guest still running after 1 s: killed its process group" in text


def test_kvm_command_line_keeps_virtmes_host_cpu():
    argv = boot.command(_guest("kvm"), virtme_run="virtme-run")
    assert "--disable-kvm" not in argv and "-cpu" not in argv


@pytest.mark.parametrize("requested, usable, probed, accel", [
    ("tcg", True, True, "tcg"), ("kvm", False, None, "kvm"), ("auto", False, None, "tcg"),
    ("auto", True, True, "kvm"), ("auto", True, False, "tcg")])
def test_kvm_only_when_asked_or_a_probe_guest_booted(requested, usable, probed, accel):
    chosen, why = boot.choose_accel(requested, usable, probed)
    assert chosen == accel and why


def test_engine_and_failed_checks_from_install_output():
    stderr = ("# --ebpf-enabled, but eBPF checks failed; falling back to iptables: [FAIL] kernel: kernel 2.6.61 "
              "(need >= 5.7) (fix: boot a kernel >= 5.7); [FAIL] cgroup2: no cgroup2 mount (fix: mount it)\n"
              "# dualstack: the host has IPv6 addresses\ntpctl: installed the iptables engine\n")
    engine, failed = guest.engine_of(stderr)
    assert engine == "iptables"
    assert [f.split(":")[0] for f in failed] == ["[FAIL] kernel", "[FAIL] cgroup2"]
    assert guest.engine_of("# --ebpf-enabled and every eBPF check passed\n") == ("ebpf", [])
    assert guest.engine_of("boom\n")[0] == "unknown"


def _install_stderr(**flags) -> str:
    """install's `# reason` lines as engine.apply writes them, from the real choice."""
    checks = flags.pop("checks")
    facts = HostFacts("6.1.0", "/sys/fs/cgroup/unified", (), (Backend("legacy", True, 0), Backend("nft", True, 0)),
                      "nf_tables", {}, ())
    config = config_module.build({"kuma_dp_user": values.ProxyUser(5678, None), **flags})
    return "".join(f"# {reason}\n" for reason in choose(config, facts, checks).reasons) + "tpctl: dry run\n"


NFT_TAKES = Check("nf_tables takes the table", True, "nftables v1.0.6: the kernel accepts the transaction")
NFT_REFUSED = Check("nf_tables takes the table", False,
                          "nftables v1.0.6: Error: Could not process rule; No such file or directory",
                          fix="a kernel with nf_tables, inet nat (5.2+) and concatenated ranges (5.6+)")


def test_the_nftables_choice_from_installs_real_reasons():
    nft_tool = Check("nft", True, "/usr/sbin/nft")
    chosen = _install_stderr(nftables_enabled=True, checks={"nftables": [nft_tool, NFT_TAKES]})
    assert "# --nftables-enabled and every nftables check passed\n" in chosen
    assert guest.engine_of(chosen) == ("nftables", [])
    refused = _install_stderr(nftables_enabled=True, checks={"nftables": [nft_tool, NFT_REFUSED]})
    engine, failed = guest.engine_of(refused)
    # the whole check, "; " in nft's error and the fix included; the passing nft check is not a failure
    assert engine == "iptables" and failed == [
        "[FAIL] nf_tables takes the table: nftables v1.0.6: Error: Could not process rule; No such file or "
        "directory (fix: a kernel with nf_tables, inet nat (5.2+) and concatenated ranges (5.6+))"]
    assert guest.engine_of(_install_stderr(checks={})) == ("iptables", [])  # the default, nothing asked


def test_the_engine_after_a_fallback_is_the_one_fallen_back_to():
    ebpf_failed = {"ebpf": [Check("kernel", False, "kernel 2.6.61 (need >= 5.7)", fix="boot a kernel >= 5.7"),
                            Check("cgroup2", False, "no cgroup2 mount")],
                   "nftables": [NFT_TAKES]}
    both = dict(ebpf_enabled=True, experimental_transparent_proxy_engine=True, nftables_enabled=True)
    engine, failed = guest.engine_of(_install_stderr(**both, checks=ebpf_failed))
    assert engine == "nftables" and [f.split(":")[0] for f in failed] == ["[FAIL] kernel", "[FAIL] cgroup2"]
    engine, failed = guest.engine_of(_install_stderr(**both, checks=dict(ebpf_failed, nftables=[NFT_REFUSED])))
    assert engine == "iptables"
    assert [f.split(":")[0] for f in failed] == ["[FAIL] kernel", "[FAIL] cgroup2", "[FAIL] nf_tables takes the table"]


def test_the_guest_records_the_nftables_dry_run_beside_choice_txt(tmp_path, monkeypatch):
    seen = []

    def fake_tpctl(*args, **kwargs):
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, "table inet tpctl {}\n",
                                           "# --nftables-enabled and every nftables check passed\n")
    monkeypatch.setattr(guest, "tpctl", fake_tpctl)
    assert guest.nftables_choice(str(tmp_path)) == {"engine": "nftables", "failed_checks": [], "exit": 0}
    assert seen[0][:3] == ("install", "--nftables-enabled", "--dry-run") and "--ebpf-enabled" not in seen[0]
    text = (tmp_path / guest.NFTABLES_CHOICE).read_text()
    assert text.startswith("$ tpctl install --nftables-enabled --dry-run  (exit 0)\n") and "table inet tpctl" in text
    assert guest.NFTABLES_CHOICE in matrix.ARTEFACTS  # kept in results/<kernel>/


def test_the_guest_saves_the_nftables_choice_after_the_ebpf_one(tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(guest, "prepare", lambda job: [])
    monkeypatch.setattr(guest, "choice", lambda out: order.append("ebpf") or {"engine": "ebpf"})
    monkeypatch.setattr(guest, "nftables_choice", lambda out: order.append("nftables") or {"engine": "iptables"})
    monkeypatch.setenv("TPCTL_TIMEOUT_SCALE", "8")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "k", "tests": []}))
    assert guest.main(str(job)) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert order == ["ebpf", "nftables"] and result["nftables_choice"] == {"engine": "iptables"} and result["done"]
    job.write_text(json.dumps({"name": "f", "tests": [], "choice": False}))  # the boot without cgroup2
    order.clear()
    guest.main(str(job))
    assert order == [] and "nftables_choice" not in json.loads((tmp_path / "result.json").read_text())


def test_junit_counts(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1">'
                    '<testcase classname="a" name="ok"/><testcase classname="a" name="bad"><failure/></testcase>'
                    '<testcase classname="a" name="err"><error/></testcase></testsuite></testsuites>')
    assert guest.junit_counts(str(path)) == {"passed": 2, "failed": 2, "skipped": 1}
    assert guest.junit_failures(str(path)) == ["a::bad", "a::err"]


GOOD = {"done": True, "release": "6.1.0-9-amd64", "choice": {"engine": "ebpf", "failed_checks": []},
        "nftables_choice": {"engine": "nftables", "failed_checks": [], "exit": 0},
        "tests": {"passed": 41, "failed": 0, "skipped": 0, "exit": 0, "seconds": 600.0, "failures": []}}


def test_rows_and_table():
    ok = table.kernel_row("debian12-6.1", "ebpf", "tcg", GOOD, 700.0, None, nftables_expected="nftables")
    died = table.kernel_row("debian11-5.10", "ebpf", "tcg", {"release": "5.10.0-9-amd64"}, 2700.0,
                            "killed after 2700 s")
    wrong = table.kernel_row("x", "ebpf", "tcg", dict(GOOD, choice={"engine": "iptables",
                                                                   "failed_checks": ["[FAIL] a|b"]}), 1.0, None)
    assert ok.ok and not died.ok and not wrong.ok
    assert "killed after 2700 s" in died.problems and "the guest did not finish (see console.log)" in died.problems
    fb = table.fallback_row("no-cgroup2", "no-cgroup2", "iptables",
                            {"ok": True, "engine": "iptables", "why": ["[FAIL] cgroup2: none"], "no_fallback_exit": 3,
                             "release": "6.1.0-9-amd64"})
    text = table.markdown([ok, died, wrong], [fb], {"when": "now", "accel": "tcg", "accel_reason": "r", "qemu": "7.2"})
    lines = text.splitlines()
    assert ("| debian12-6.1 | 6.1.0-9-amd64 | ebpf (ebpf) | every eBPF check passed | nftables (nftables) | "
            "41 / 0 / 0 | 700 (600) | ok |" in lines)
    assert any(line.startswith("| x |") and "[FAIL] a\\|b" in line for line in lines)  # cells escape |
    assert "| no-cgroup2 | 6.1.0-9-amd64 | no-cgroup2 | iptables (iptables) | [FAIL] cgroup2: none | 3 | ok |" in lines
    record = table.as_json([ok], [fb], {})
    assert record["ok"] and record["kernels"][0]["ok"]
    assert not table.as_json([ok, died], [fb], {})["ok"]


def test_a_row_whose_nftables_choice_differs_is_not_ok_and_says_so():
    fell_back = dict(GOOD, nftables_choice={"engine": "iptables", "exit": 0,
                                            "failed_checks": ["[FAIL] nf_tables takes the table: Error: x|y"]})
    row = table.kernel_row("debian11-5.10", "ebpf", "tcg", fell_back, 700.0, None, nftables_expected="nftables")
    assert (row.engine, row.nftables, row.failed) == ("ebpf", "iptables", 0) and not row.ok
    as_expected = table.kernel_row("old", "ebpf", "tcg", fell_back, 700.0, None, nftables_expected="iptables")
    assert as_expected.ok  # a kernel expected to refuse the table
    unasked = table.kernel_row("debian11-5.10", "ebpf", "tcg", dict(GOOD, nftables_choice=None), 700.0, None,
                               nftables_expected="nftables")  # the guest died before, or an older guest.py
    assert unasked.nftables == "" and not unasked.ok
    line = next(line for line in table.markdown([row, unasked], [], {}).splitlines()
                if line.startswith("| debian11-5.10 |"))
    cells = [c.strip() for c in line.split(" | ")]
    assert cells[4] == "iptables (nftables): [FAIL] nf_tables takes the table: Error: x\\|y"
    assert cells[-1] == "FAIL: --nftables-enabled chose iptables, expected nftables |"
    assert "FAIL: --nftables-enabled chose nothing, expected nftables |" in table.markdown([unasked], [], {})
    record = table.as_json([row], [], {})
    assert not record["ok"] and record["kernels"][0]["nftables"] == "iptables"


# a row of vagrant/results/matrix.json as written before the nftables choice was recorded
OLD_ROW = {"name": "debian11-5.10", "release": "5.10.0-32-amd64", "accel": "tcg", "expected": "ebpf", "engine": "ebpf",
           "why": "every eBPF check passed", "passed": 44, "failed": 0, "skipped": 0, "boot_seconds": 4223.8,
           "test_seconds": 4063.0, "problems": [], "run": "2026-11-21 21:50 UTC at b1e2395", "ok": True}


def test_rows_recorded_before_the_nftables_choice_still_render_and_keep_their_verdict():
    previous = {"meta": {"when": "2026-11-21 18:37 UTC"}, "kernels": [OLD_ROW], "fallbacks": []}
    rerun = dataclasses.replace(table.kernel_row("debian12-6.1", "ebpf", "tcg", GOOD, 700.0, None,
                                                 nftables_expected="nftables"), run="2026-12-02 10:00 UTC at abc1234")
    rows, _, meta = table.merge(previous, [rerun], [], {"runs": {rerun.run: {"tests": ["t"]}}},
                                ["debian11-5.10", "debian12-6.1"], [])
    old = rows[0]
    assert (old.name, old.nftables_expected, old.nftables, old.ok) == ("debian11-5.10", "", "", True)
    lines = table.markdown(rows, [], meta).splitlines()
    assert any(line.startswith("| debian11-5.10 |") and "| - (not recorded) |" in line
               and line.endswith("| ok (run 2026-11-21 21:50 UTC at b1e2395) |") for line in lines)
    assert any(line.startswith("| debian12-6.1 |") and "| nftables (nftables) |" in line for line in lines)
    # and the record written now reads back the same
    again, _, _ = table.merge(table.as_json(rows, [], meta), [], [], {}, ["debian11-5.10", "debian12-6.1"], [])
    assert again == rows


def test_ci_and_named_selection():
    data = kernels.Matrix([kernels.KernelSpec("a", "s", "5.10", "ebpf", True, "max"),
                           kernels.KernelSpec("b", "s", "6.1", "ebpf", False, "max")], [], ["t"], ["t"])
    assert [k.name for k in matrix.select(data, None, ci=True)] == ["a"]
    assert [k.name for k in matrix.select(data, "b", ci=False)] == ["b"]
    with pytest.raises(kernels.MatrixError, match="unknown zz"):
        matrix.select(data, "zz", ci=False)
    # no --jobs: every kernel chosen boots at once (the four of kernels.yaml under --ci)
    assert matrix.parse_args(["--ci"]).jobs is None and matrix.parse_args(["--jobs", "2"]).jobs == 2


def test_box_differences_name_what_differs():
    b = {"engine": "iptables", "fallback_reasons": ["kernel"], "facts": {"iptables_default": "legacy"}}
    good = box.differences(b, {"engine": "iptables", "failed_checks": ["[FAIL] kernel: 4.15"]},
                           {"iptables_default": "legacy"}, {"ok": True}, {"passed": 3, "failed": 0, "skipped": 0})
    assert good == []
    bad = box.differences(b, {"engine": "ebpf", "failed_checks": []}, {"iptables_default": "nf_tables"},
                          {"ok": False}, {"passed": 0, "failed": 1, "skipped": 0})
    assert len(bad) == 5


@pytest.fixture
def timeouts_seen(monkeypatch):
    """TPCTL_TIMEOUT_SCALE at 8, and every subprocess.run's timeout recorded instead of run."""
    from engine import timeouts

    monkeypatch.setenv(timeouts.SCALE_ENV, "8")  # read when each limit is set
    seen = []

    def fake_run(argv, **kw):
        seen.append(kw["timeout"])
        return subprocess.CompletedProcess(argv, 0, "LISTEN", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    return seen


def test_timeout_scale_stretches_the_sandbox_bounds(timeouts_seen):
    from sandbox import netns

    sandbox = netns.Sandbox.__new__(netns.Sandbox)
    sandbox.cgroup, sandbox.app = None, "app"
    sandbox.run("app", ["true"], timeout=10)
    sandbox.wait_for_port("app", 9000)  # its `ss` call
    assert timeouts_seen == [10 * 8.0, 10 * 8.0]
    assert netns.bound(30) == 240.0


def test_timeout_scale_stretches_the_engines_own_limits(timeouts_seen):
    """5.10 under TCG: the first python-iptables commit (module loads) took over 120 s."""
    from engine.iptables import backends, live

    backend = backends.make_backend("legacy", 5, {"iptables-save": "/bin/true"})
    backend.save(4)
    with pytest.raises(ValueError):  # the fake run answers no worker JSON; its time limit is what counts
        backend.swap_tables(4, [], live.Owned((), ()))
    assert timeouts_seen == [60 * 8.0, 120 * 8.0]


def test_update_replaces_the_rows_run_now_and_keeps_the_others_with_their_run():
    earlier = table.kernel_row("debian12-6.1", "ebpf", "tcg", GOOD, 700.0, None)
    died = table.kernel_row("debian11-5.10", "ebpf", "tcg", {"release": "5.10.0-9-amd64"}, 2700.0, "killed")
    fb = table.fallback_row("no-cgroup2", "no-cgroup2", "iptables", {"ok": True, "engine": "iptables"})
    previous = table.as_json([died, earlier], [fb], {"when": "2026-11-21 17:26 UTC", "tests": ["t"]})
    rerun = dataclasses.replace(table.kernel_row("debian11-5.10", "ebpf", "tcg", GOOD, 900.0, None),
                                run="2026-11-21 18:30 UTC at abc1234")
    now = {"runs": {"2026-11-21 18:30 UTC at abc1234": {"tests": ["t"]}}}
    kernels_now, fallbacks_now, meta = table.merge(previous, [rerun], [], now, ["debian11-5.10", "debian12-6.1"],
                                                   ["no-cgroup2"])
    assert [(r.name, r.ok, r.run) for r in kernels_now] == [
        ("debian11-5.10", True, "2026-11-21 18:30 UTC at abc1234"), ("debian12-6.1", True, "2026-11-21 17:26 UTC")]
    assert [(r.name, r.run) for r in fallbacks_now] == [("no-cgroup2", "2026-11-21 17:26 UTC")]
    assert meta["runs"] == {"2026-11-21 17:26 UTC": {"tests": ["t"], "ci": False},
                            "2026-11-21 18:30 UTC at abc1234": {"tests": ["t"]}}
    text = table.markdown(kernels_now, fallbacks_now, meta)
    assert "rows from 2 runs" in text and "ok (run 2026-11-21 18:30 UTC at abc1234) |" in text


PYTEST_LOG = """\
============================= test session starts ==============================
tests/netns/test_traffic.py::test_outbound[ebpf] PASSED                  [  2%]
tests/netns/test_traffic.py::test_outbound[iptables-nft] FAILED          [  4%]
tests/netns/test_traffic.py::test_inbound[ebpf] PASSED                   [  6%]
tests/netns/test_traffic.py::test_inbound[ebpf] ERROR                    [  6%]
tests/netns/test_traffic.py::test_dns[ebpf] SKIPPED (no resolver)        [  8%]
tests/ebpf/test_probe.py::test_probe_record PASSED                       [ 10%]
tests/ebpf/test_probe.py::test_probe_kernel
vagrant.guest: pytest killed after 10500 s
=========================== short test summary info ============================
FAILED tests/netns/test_traffic.py::test_outbound[iptables-nft] - AssertionError
"""


def test_counts_from_a_pytest_log_cut_short():
    counts = table.pytest_log_counts(PYTEST_LOG)
    # a teardown ERROR after PASSED is a failure; a test cut off mid-way is not counted; -ra's summary is not
    # a second outcome
    assert counts == {"passed": 2, "failed": 2, "skipped": 1,
                      "failures": ["tests/netns/test_traffic.py::test_outbound[iptables-nft]",
                                   "tests/netns/test_traffic.py::test_inbound[ebpf]"]}
    assert table.pytest_log_counts("") == {"passed": 0, "failed": 0, "skipped": 0, "failures": []}


def test_a_guest_killed_during_its_tests_shows_how_far_they_got(tmp_path):
    (tmp_path / "pytest.log").write_text(PYTEST_LOG)
    job = {"tests": ["tests/netns/test_traffic.py"]}
    half = {"kernel": "debian11-5.10", "release": "5.10.0-32-amd64", "choice": {"engine": "ebpf", "failed_checks": []}}
    result = matrix.with_counts_so_far(half, job, str(tmp_path))
    row = table.kernel_row("debian11-5.10", "ebpf", "tcg", result, 6000.0, "killed after 6000 s")
    assert (row.passed, row.failed, row.skipped) == (2, 2, 1) and not row.ok
    assert "tests counted from pytest.log up to the stop" in row.problems
    assert "failed: tests/netns/test_traffic.py::test_outbound[iptables-nft]" in row.problems
    # a guest that finished keeps its own (junit) record; a guest with no tests to run gets none
    assert matrix.with_counts_so_far(GOOD, job, str(tmp_path)) is GOOD
    assert matrix.with_counts_so_far(half, {"tests": []}, str(tmp_path)) is half
    assert matrix.with_counts_so_far(half, job, str(tmp_path / "nothing")) is half


def test_the_guest_counts_from_its_log_when_pytest_is_killed(tmp_path, monkeypatch):
    def killed(argv, stdout, **kwargs):
        stdout.write(PYTEST_LOG)
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])
    monkeypatch.setattr(guest, "sh", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    monkeypatch.setattr(guest.subprocess, "run", killed)
    tests = guest.run_tests({"tests": ["tests/netns"], "tests_timeout": 5}, str(tmp_path))
    assert tests["exit"] == 124 and tests["from_log"] and (tests["passed"], tests["failed"]) == (2, 2)
    assert "pytest killed after 5 s" in (tmp_path / "pytest.log").read_text()


def test_the_matrix_refuses_a_checkout_the_guests_cannot_see(monkeypatch):
    monkeypatch.setattr(matrix, "REPO", "/tmp/tpctl-clone")
    with pytest.raises(kernels.MatrixError, match=r"under /tmp, which every guest mounts afresh.*outside /run, .*/tmp"):
        matrix.preflight()


def test_fetch_only_fetches_the_ci_kernels_and_boots_nothing(monkeypatch, capsys):
    fetched = []

    def fake_fetch(spec):
        fetched.append(spec.name)
        return kernels.Kernel(spec, f"{spec.series}.0-1-amd64", "/nonexistent", ())

    def no_boot(*_args, **_kwargs):
        raise AssertionError("--fetch-only booted a guest")

    monkeypatch.setattr(matrix, "preflight", lambda: None)
    monkeypatch.setattr(kernels, "fetch", fake_fetch)
    monkeypatch.setattr(matrix, "run_guest", no_boot)
    monkeypatch.setattr(boot, "kvm_usable", no_boot)
    assert matrix.main(["--ci", "--fetch-only"]) == 0
    assert fetched == [k.name for k in kernels.load().kernels if k.ci] and fetched
    out = capsys.readouterr().out
    assert all(f"matrix: {name}: " in out for name in fetched)
