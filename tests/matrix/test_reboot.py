"""The pure parts of the reboot test (make reboot, vagrant/reboot*.py): the initramfs archive and
its /init, the guest's units and verdicts, the console's marks and summary lines, the rows, the
table and the QEMU command line. No VM is booted, nothing is mounted."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import shutil
import stat
import subprocess

import pytest

from vagrant import initramfs, reboot, reboot_guest, reboot_image
from vagrant import reboot_table as table
from vagrant.kernels import MatrixError

MARK = initramfs.MARK


# -- the initramfs -----------------------------------------------------------------------------
def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """An independent reader of newc archives: (name, mode, data, rdev) up to the trailer."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos: pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, fields[1], body, (fields[9], fields[10])))


def test_archive_is_newc_with_aligned_names_and_data_and_a_trailer():
    entries = [initramfs.Entry("bin", stat.S_IFDIR | 0o755), initramfs.Entry("init", stat.S_IFREG | 0o755, b"#!x\n"),
               initramfs.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               initramfs.Entry("odd", stat.S_IFREG | 0o644, b"12345")]
    data = initramfs.archive(entries)
    # the first header, field by field: ino 1, mode 040755, uid, gid, nlink 2, mtime, size 0, dev 0/0,
    # rdev 0/0, namesize 4 ("bin" and its NUL), check 0
    assert data[:110] == (b"070701" + b"00000001" + b"000041ED" + b"00000000" * 2 + b"00000002" + b"00000000" * 6
                          + b"00000004" + b"00000000")
    assert data[110:114] == b"bin\0" and len(data) % 4 == 0
    assert parse_newc(data) == [("bin", stat.S_IFDIR | 0o755, b"", (0, 0)), ("init", stat.S_IFREG | 0o755, b"#!x\n", (0, 0)),
                                ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)), ("odd", stat.S_IFREG | 0o644, b"12345", (0, 0))]


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio lists the archive as the kernel's unpacker reads it")
def test_archive_lists_with_cpio(tmp_path):
    data = initramfs.archive([initramfs.Entry("bin", stat.S_IFDIR | 0o755),
                              initramfs.Entry("bin/busybox", stat.S_IFREG | 0o755, b"\x7fELF" * 3)])
    listed = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, timeout=30)
    assert listed.returncode == 0 and listed.stdout.decode().split() == ["bin", "bin/busybox"]


def test_module_files_in_load_order_once_and_builtins_need_none():
    text = ("insmod /k/virtio.ko \ninsmod /k/virtio_ring.ko \nbuiltin virtio_pci\n"
            "insmod /k/virtio.ko \ninsmod /k/ext4.ko.xz foo=1\n")
    assert initramfs.module_files(text) == ["/k/virtio.ko", "/k/virtio_ring.ko", "/k/ext4.ko.xz"]


def test_init_loads_in_order_waits_bounded_and_hands_over_to_systemd():
    script = initramfs.init_script(["virtio.ko", "virtio_blk.ko", "ext4.ko"], wait_seconds=7)
    loads = re.findall(r"^insmod /modules/(\S+)", script, re.M)
    assert loads == ["virtio.ko", "virtio_blk.ko", "ext4.ko"]
    assert "$tries -lt 35 ]" in script  # 0.2 s steps: 7 s
    assert script.rstrip().endswith("exec switch_root /newroot /sbin/init")
    assert "poweroff -f" in script and f"{MARK} initramfs: " in script
    # systemd-sysv's /sbin/init is an absolute link: only a link test works from the initramfs
    assert "[ -L /newroot/sbin/init ]" in script


def test_module_bytes_decompresses_xz(tmp_path):
    import lzma

    path = tmp_path / "m.ko.xz"
    path.write_bytes(lzma.compress(b"\x7fELF module"))
    assert initramfs.module_bytes(str(path)) == b"\x7fELF module"
    with pytest.raises(initramfs.InitramfsError):
        (tmp_path / "m.ko.zst").write_bytes(b"x")
        initramfs.module_bytes(str(tmp_path / "m.ko.zst"))


# -- the guest's units and job -----------------------------------------------------------------
def test_units_make_the_topology_before_tpctl_and_bound_the_scenario():
    units = reboot_guest.units(1234)
    assert set(units) == set(reboot_guest.UNITS)
    net = units["tpctl-reboot-net.service"]
    assert "Before=tpctl.service" in net and "Type=oneshot" in net and "RemainAfterExit=yes" in net
    assert "ip link add tpapp type veth peer name tpsrv netns srv" in net
    scenario = units["tpctl-reboot-scenario.service"]
    assert "JobTimeoutSec=1234" in scenario and "TimeoutStartSec=1234" in scenario
    assert re.search(r"^After=.*\btpctl\.service\b", scenario, re.M)
    assert "User=5678" in units["tpctl-reboot-sidecar.service"]
    assert "NetworkNamespacePath=/run/netns/srv" in units["tpctl-reboot-greeter.service"]


def test_every_address_in_the_guest_is_a_benchmarking_one():
    text = "\n".join(reboot_guest.units(60).values())
    addresses = re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", text)
    assert addresses and all(ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15") for a in addresses)


def test_the_job_survives_the_kernel_command_line():
    job = reboot.guest_job(reboot.load().engines[1], 8)
    word = reboot_guest.cmdline_argument(job)
    assert " " not in word
    assert reboot_guest.job_from_cmdline(f"console=ttyS0 {word} quiet") == job
    assert reboot_guest.job_from_cmdline("console=ttyS0") is None
    # x86's COMMAND_LINE_SIZE is 2048, the rest of the line included
    assert all(len(reboot.kernel_cmdline(reboot.guest_job(e, 8))) < 1024 for e in reboot.load().engines)


# -- verdicts ----------------------------------------------------------------------------------
DST = "198.18.0.2:9000"


def test_outbound_verdicts():
    direct = {"reply": f"hello from {DST} to 198.18.0.1:40000", "local": "198.18.0.1:40000"}
    proxied = {"reply": f"hello from {DST} to 198.18.0.1:50000", "local": "198.18.0.1:40000"}
    record = {"listener": "outbound", "original_dst": DST}
    assert reboot_guest.outbound_verdict(direct, []) == "direct"
    assert reboot_guest.outbound_verdict(proxied, [record]) == "redirected"
    # the two views must agree: a sidecar record with a direct connection is neither
    assert reboot_guest.outbound_verdict(direct, [record]).startswith("inconsistent")
    assert reboot_guest.outbound_verdict(proxied, []).startswith("inconsistent")
    assert reboot_guest.outbound_verdict(proxied, [dict(record, original_dst="198.18.0.2:9001")]).startswith("inconsistent")
    assert reboot_guest.outbound_verdict({"error": "timed out"}, []) == "failed: timed out"
    assert reboot_guest.outbound_verdict({"reply": "hello from 198.18.0.9:9000 to a:1", "local": "a:1"},
                                         []).startswith("failed: unexpected reply")


def test_inbound_verdicts():
    app = "198.18.0.1:8080"
    record = {"listener": "inbound", "original_dst": app}
    assert reboot_guest.inbound_verdict({"reply": f"hello from {app} to 198.18.0.2:41000"}, []) == "direct"
    assert reboot_guest.inbound_verdict({"reply": f"hello from {app} to 127.0.0.6:41000"}, [record]) == "redirected"
    assert reboot_guest.inbound_verdict({"reply": f"hello from {app} to 127.0.0.6:41000"}, []).startswith("inconsistent")
    assert reboot_guest.inbound_verdict({"reply": f"hello from {app} to 198.18.0.2:1"}, [record]).startswith("inconsistent")


def test_what_the_guest_reads_from_tools():
    dump = "table inet tpctl {\n\tchain pre {\n}\n-A OUTPUT -j TPCTL_OUTBOUND\n-A OUTPUT -m comment --comment x -j RETURN\n"
    assert reboot_guest.tagged_lines(dump) == ["table inet tpctl {", "-A OUTPUT -j TPCTL_OUTBOUND"]
    assert reboot_guest.tp_programs(json.dumps([{"name": "tp_sock4_connect"}, {"name": "sd_devices"}, {}])) == [
        "tp_sock4_connect"]
    assert reboot_guest.tp_programs("") == []
    assert reboot_guest.tp_programs("Error: x")[0].startswith("unreadable")
    assert reboot_guest.unit_properties("LoadState=loaded\nResult=success\nExecMainStatus=0\n") == {
        "LoadState": "loaded", "Result": "success", "ExecMainStatus": "0"}
    assert reboot_guest.microseconds_to_seconds("172229528") == 172.2
    assert reboot_guest.microseconds_to_seconds("0") is None and reboot_guest.microseconds_to_seconds("") is None
    status = "tpctl: installed, engine ebpf\n  why:  x\n  persistent: yes (tpctl.service enabled)\n  drift: none"
    assert reboot_guest.persistent_line(status) == "persistent: yes (tpctl.service enabled)"


# -- the console -------------------------------------------------------------------------------
def record(boot: int, *outcomes: bool, engine: str = "ebpf") -> dict:
    return {"boot": boot, "phase": reboot_guest.PHASES[boot], "engine": engine, "uptime": [20.0, 80.0],
            "checks": [{"name": f"check {i}", "ok": ok, "detail": f"d{i}"} for i, ok in enumerate(outcomes)]}


def test_summary_line_round_trip_and_a_garbled_line_is_dropped():
    line = reboot_guest.summary_line(record(2, True, False))
    found = table.events([(1.0, "[  266.4] python[243]: " + line)])
    assert [(e.kind, e.boot) for e in found] == [("result", 2)]
    back = table.summaries(found)[2]
    assert back["checks"] == [["check 0", True], ["check 1", False]] and back["engine"] == "ebpf"
    crc, data = found[0].text.split()
    flipped = data[:10] + ("A" if data[10] != "A" else "B") + data[11:]
    assert table.summary(f"{crc} {flipped}") is None
    assert table.summary(f"{crc} {data[:-8]}") is None  # cut by the console
    assert table.summary("crc=zz nonsense") is None


def test_events_and_timings_per_boot():
    lines = [(9.0, f"{MARK} initramfs: started (kernel 6.1)"), (10.0, f"{MARK} initramfs: switching"),
             (40.0, f"[ 30.1] python[9]: {MARK} boot=1 start uptime=30.1"),
             (41.0, f"{MARK} boot=1 check ok   x: y"), (100.0, f"{MARK} boot=1 done checks=3/3 next=reboot"),
             (120.0, f"{MARK} initramfs: started (kernel 6.1)"), (170.0, f"{MARK} boot=2 start uptime=40"),
             (400.0, f"{MARK} boot=2 done checks=9/9 next=reboot"), (430.0, f"{MARK} initramfs: started"),
             (470.0, f"{MARK} boot=3 start"), (520.0, f"{MARK} boot=3 done checks=5/5 next=poweroff"),
             (530.0, "[  99.0] reboot: Power down"), (531.0, "unrelated line")]
    found = table.events(lines)
    assert [e.kind for e in found].count("initramfs") == 4
    times = table.timings(found, 535.0)
    assert times[1] == {"up": 40.0, "checks": 60.0, "down": 20.0}
    assert times[2] == {"up": 50.0, "checks": 230.0, "down": 30.0}
    assert times[3] == {"up": 40.0, "checks": 50.0, "down": 15.0}
    # a guest killed before boot 2 ended: no times made up
    cut = table.timings(table.events(lines[:7]), None)
    assert cut[2] == {"up": 50.0, "checks": None, "down": None}


# -- rows --------------------------------------------------------------------------------------
def all_good(engine: str = "ebpf") -> dict[int, dict]:
    return {1: record(1, True, True, engine=engine),
            2: dict(record(2, True, True, True, engine=engine), tpctl_service_seconds=12.5,
                    boot_times={"systemd": 7.2, "multi_user": 95.0}),
            3: record(3, True, True, engine=None)}


def test_a_run_is_ok_only_when_every_check_of_all_three_boots_passed_and_the_guest_powered_off():
    assert table.engine_run("ebpf", "ebpf", all_good(), [], 600.0, "powered off", []).ok
    bad = all_good()
    bad[3] = record(3, True, False, engine=None)
    assert not table.engine_run("ebpf", "ebpf", bad, [], 600.0, "powered off", []).ok
    missing = all_good()
    del missing[2]
    run = table.engine_run("ebpf", "ebpf", missing, [], 600.0, "powered off", [])
    assert not run.ok and run.boots[1].source == "missing"
    assert not table.engine_run("ebpf", "ebpf", all_good(), [], 5400.0, "killed after 5400 s", []).ok
    assert not table.engine_run("ebpf", "ebpf", all_good(), [], 600.0, "powered off", ["boot2.json: bad"]).ok
    other = all_good()
    other[2] = dict(other[2], engine="iptables")  # tpctl.service fell back at boot: not what was asked
    assert "boot 2: engine iptables, expected ebpf" in table.engine_run("ebpf", "ebpf", other, [], 1.0, "powered off",
                                                                        []).problems
    extra = {**all_good(), 4: record(3, True)}
    assert not table.engine_run("ebpf", "ebpf", extra, [], 1.0, "powered off", []).ok


def test_a_boot_without_a_share_record_comes_from_its_console_line():
    records = all_good()
    del records[2]
    line = reboot_guest.summary_line(record(2, True, True))
    run = table.engine_run("ebpf", "ebpf", records, table.events([(300.0, line)]), 600.0, "powered off", [])
    assert run.boots[1].source == "console" and run.boots[1].ok and run.ok
    bad = table.engine_run("ebpf", "ebpf", records, table.events([(300.0, reboot_guest.summary_line(record(2, False)))]),
                           600.0, "powered off", [])
    assert not bad.boots[1].ok and not bad.ok


def test_an_error_in_a_boot_fails_it_even_when_its_checks_passed():
    records = all_good()
    records[1] = dict(records[1], error="Traceback ...\nKeyError: 'flags'")
    run = table.engine_run("ebpf", "ebpf", records, [], 1.0, "powered off", [])
    assert not run.boots[0].ok and not run.ok


def test_markdown_and_json():
    good = table.engine_run("iptables", "iptables", all_good("iptables"), [], 500.0, "powered off", [])
    bad_records = all_good()
    bad_records[2] = record(2, True, False)
    bad = table.engine_run("ebpf", "ebpf", bad_records, [], 900.0, "powered off", [])
    meta = {"when": "2026-12-01 22:00 UTC", "commit": "abc1234", "kernel": "debian12-6.1", "image": {"summary": "s"}}
    text = table.markdown([good, bad], meta)
    assert ("| iptables | 2 | after reboot: tpctl.service, then uninstall | 3 / 3 | iptables | - / - / - | 7 / 95 | 12 "
            "| ok |") in text
    assert "| ebpf | 2 | after reboot: tpctl.service, then uninstall | 1 / 2 | ebpf |" in text
    assert "| ebpf | ebpf | 900 | powered off | FAIL |" in text
    assert "- FAIL: check 1 (d1)" in text and "abc1234" in text
    record_json = table.as_json([good, bad], meta)
    assert record_json["ok"] is False and record_json["runs"][0]["ok"] is True
    assert record_json["runs"][1]["boots"][1]["passed"] == 1
    json.dumps(record_json)
    assert table.as_json([], meta)["ok"] is False


# -- the host side -----------------------------------------------------------------------------
def test_reboot_yaml_and_its_errors(tmp_path):
    spec = reboot.load()
    assert spec.kernel == "debian12-6.1" and {e.name for e in spec.engines} == {"iptables", "ebpf"}
    ebpf = next(e for e in spec.engines if e.name == "ebpf")
    assert "--ebpf-enabled" in ebpf.flags and ebpf.flags[ebpf.flags.index("--ebpf-tc-attach-iface") + 1] == "tpapp"
    assert [e.name for e in reboot.select(spec, "ebpf")] == ["ebpf"]
    with pytest.raises(MatrixError, match="unknown zz"):
        reboot.select(spec, "zz")
    bad = tmp_path / "reboot.yaml"
    bad.write_text("kernel: k\nsuite: s\nengines:\n  - {name: a, engine: nope}\n  - {name: a, engine: ebpf, "
                   "flags: [--persist]}\n")
    with pytest.raises(MatrixError) as err:
        reboot.load(str(bad))
    assert "duplicate engine a" in str(err.value) and "engine nope" in str(err.value) and "--persist" in str(err.value)


IMAGE = reboot_image.Image("/c/disk.img", "/c/initrd", "/k/vmlinuz", "6.1.0-50-amd64", 0.0, 0.0, 1, {})


def test_qemu_has_no_network_device_reboots_in_place_and_boots_the_overlay():
    argv = reboot.qemu_argv(IMAGE, "/r/disk.qcow2", "/r/share", "tcg", "max,-cx16", 1, "2G", {"engine": "ebpf"})
    assert "-no-reboot" not in argv and "-no-shutdown" not in argv
    assert "-nodefaults" in argv and argv[argv.index("-net") + 1] == "none"
    assert not any(a.startswith(("user", "tap", "bridge")) or "netdev" in a for a in argv)
    assert argv[argv.index("-drive") + 1].startswith("file=/r/disk.qcow2,format=qcow2,if=virtio")
    assert "/c/disk.img" not in " ".join(argv)  # the image itself only as the overlay's backing file
    assert argv[argv.index("-cpu") + 1] == "max,-cx16" and argv[argv.index("-accel") + 1] == "tcg"
    assert "mount_tag=tpctl-results" in argv[argv.index("-virtfs") + 1]
    append = argv[argv.index("-append") + 1]
    assert "console=ttyS0" in append and "panic=0" in append and "tpctl_reboot.job=" in append
    kvm = reboot.qemu_argv(IMAGE, "/r/d", "/r/s", "kvm", "max,-cx16", 2, "2G", {})
    assert kvm[kvm.index("-cpu") + 1] == "host" and kvm[kvm.index("-smp") + 1] == "2"


def test_mke2fs_arguments_and_version():
    assert reboot_image.parse_mke2fs_version("mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0") == (
        1, 47, 0)
    assert reboot_image.parse_mke2fs_version("nothing") == (0,)
    new = reboot_image.mke2fs_argv("/root", "/img", 4000, (1, 47, 0))
    assert new[-4:] == ["-d", "/root", "/img", "4000M"] and "^orphan_file" in new
    assert "^orphan_file" not in reboot_image.mke2fs_argv("/root", "/img", 4000, (1, 46, 5))
    assert reboot_image.image_size(0) == 1025
    assert reboot_image.image_size(4 << 30) == (5 << 30 >> 20) + 1024 + 1


def test_the_root_gets_systemd_and_the_projects_own_setup():
    command = reboot_image.setup_command()[-1]
    assert all(p in command for p in ("systemd-sysv", "udev", "kmod")) and command.endswith(
        "exec bash scripts/setup.sh --no-matrix")
    files = reboot_image.guest_files(900, 12)
    assert "DefaultEnvironment=TPCTL_TIMEOUT_SCALE=12" in files["/etc/systemd/system.conf.d/tpctl-reboot.conf"][1]
    assert "JobTimeoutSec=900" in files["/etc/systemd/system/tpctl-reboot-scenario.service"][1]
    links = reboot_image.enabled_links()
    assert all(links[f"/etc/systemd/system/multi-user.target.wants/{u}"] == f"../{u}" for u in reboot_guest.UNITS)
    assert links["/etc/systemd/system/serial-getty@ttyS0.service"] == "/dev/null"
    assert not any("tpctl.service" in path for path in links)  # tpctl's unit is install --persist's alone
    user = reboot_image.proxy_user_lines()
    assert user["passwd"].split(":")[2:4] == ["5678", "5678"] and user["group"] == "kuma-dp:x:5678:"


def test_root_key_changes_with_the_packages(monkeypatch):
    key = reboot_image.root_key(reboot.REPO, "p1")
    assert key == reboot_image.root_key(reboot.REPO, "p1") and key != reboot_image.root_key(reboot.REPO, "p2")
    monkeypatch.setattr(reboot_image, "PACKAGES", (*reboot_image.PACKAGES, "extra"))
    assert reboot_image.root_key(reboot.REPO, "p1") != key


def test_tree_digest_sees_changes_but_not_bytecode(tmp_path):
    (tmp_path / "srv" / "__pycache__").mkdir(parents=True)
    (tmp_path / "srv" / "a.py").write_text("x")
    before = reboot_image.tree_digest(str(tmp_path), ("/srv",))
    (tmp_path / "srv" / "__pycache__" / "a.pyc").write_text("y")
    assert reboot_image.tree_digest(str(tmp_path), ("/srv",)) == before
    (tmp_path / "srv" / "a.py").write_text("xy")
    assert reboot_image.tree_digest(str(tmp_path), ("/srv",)) != before


def test_boot_row_dataclass_defaults_are_not_ok():
    assert not table.BootRow(1, "p", "missing").ok
    assert not dataclasses.replace(table.BootRow(1, "p", "share"), checks=()).ok
