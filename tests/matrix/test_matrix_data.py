"""The kernel and distribution matrices as data: boxes.yaml and kernels.yaml are consistent, and
the Vagrantfile that reads boxes.yaml validates (offline, no provider needed)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ebpf.requirements import MIN_KERNEL as MIN_EBPF_KERNEL
from engine.probe import kernel_version
from vagrant import box, kernels

VAGRANT_DIR = os.path.dirname(os.path.abspath(box.__file__))
BOXES = box.load_boxes()
MATRIX = kernels.load()


def test_vagrant_validate_passes(tmp_path):
    vagrant = shutil.which("vagrant")
    assert vagrant, "vagrant not found (fix: apt-get install vagrant; scripts/setup.sh installs it)"
    # a private home and dot-file folder: validation leaves nothing in ~/.vagrant.d or vagrant/.vagrant
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    # --ignore-provider: no provider (libvirt, VirtualBox) is installed where the tests run
    result = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=VAGRANT_DIR, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    for name in BOXES:
        assert f"==> {name}:" in result.stdout, f"the Vagrantfile does not define {name}"


def test_the_boxes_the_issue_asks_for_are_there():
    boxes = {b["box"] for b in BOXES.values()}
    for wanted in ("ubuntu1804", "ubuntu2004", "ubuntu2204", "ubuntu-24.04", "bullseye", "bookworm", "fedora"):
        assert any(wanted in name for name in boxes), f"no box for {wanted}"
    assert {BOXES["ubuntu1804"]["kernel"], BOXES["ubuntu2004"]["kernel"]} == {"4.15", "5.4"}
    assert BOXES["fedora40"]["facts"]["iptables_default"] == "nf_tables"


@pytest.mark.parametrize("name", sorted(BOXES))
def test_each_box_expects_the_engine_its_kernel_and_facts_allow(name):
    b = BOXES[name]
    kernel_ok = kernel_version(b["kernel"]) >= MIN_EBPF_KERNEL
    facts = b["facts"]
    expected = "ebpf" if kernel_ok and facts.get("cgroup2_mount") else "iptables"
    assert b["engine"] == expected, f"{name}: kernel {b['kernel']} and facts {facts} mean {expected}"
    reasons = set(b["fallback_reasons"])
    if expected == "ebpf":
        assert not reasons
    else:
        assert ("kernel" in reasons) == (not kernel_ok) and ("cgroup2" in reasons) == (not facts.get("cgroup2_mount"))
        assert "not ebpf" in b["tests"], f"{name}: the eBPF suite cannot pass where eBPF falls back"
    assert facts["iptables_default"] in ("legacy", "nf_tables")
    assert b["family"] in ("debian", "fedora")
    assert b["tests"], f"{name}: no tests to run"


def test_provision_handles_every_family_and_python():
    with open(os.path.join(VAGRANT_DIR, "provision.sh"), encoding="utf-8") as handle:
        text = handle.read()
    assert "debian|ubuntu)" in text and "fedora)" in text
    old = [b for b in BOXES.values() if kernel_version(b["python"]) < (3, 11)]
    assert old and "uv python install 3.11" in text  # tpctl needs Python >= 3.11
    result = subprocess.run(["bash", "-n", os.path.join(VAGRANT_DIR, "provision.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_kernels_yaml_expects_ebpf_from_5_7_and_names_real_guests():
    assert {k.series for k in MATRIX.kernels} >= {"5.10", "6.1", "6.12"}
    for k in MATRIX.kernels:
        series = kernel_version(k.series if "." in k.series else f"{k.series}.0")  # "7": any 7.x of sid
        expected = "ebpf" if series >= MIN_EBPF_KERNEL else "iptables"
        assert k.engine == expected, k
        assert "cx16" in k.cpu or series < (6, 12), "6.12 double-faults under TCG with cx16"
    names = {k.name for k in MATRIX.kernels}
    assert {f.condition for f in MATRIX.fallbacks} == set(kernels.CONDITIONS)
    for f in MATRIX.fallbacks:
        assert f.on in names and f.engine == "iptables" and f.reason in ("kernel", "cgroup2")
    assert any(k.ci for k in MATRIX.kernels) and MATRIX.tests and MATRIX.ci_tests
    for arg in MATRIX.tests + MATRIX.ci_tests:
        path, _, function = arg.partition("::")
        path = os.path.join(os.path.dirname(VAGRANT_DIR), path)
        assert os.path.exists(path), arg
        if function:
            with open(path, encoding="utf-8") as handle:
                assert f"def {function}(" in handle.read(), f"{arg}: no such test"


# the nftables engine's check has the kernel take its table: inet nat needs Linux 5.2, the
# concatenated interval sets (ports-for-uids) 5.6 (engine/nftables/redirect.py's fix text)
MIN_NFTABLES_KERNEL = (5, 6)


def test_kernels_yaml_expects_the_nftables_engine_where_the_kernel_takes_its_table():
    for k in MATRIX.kernels:
        series = kernel_version(k.series if "." in k.series else f"{k.series}.0")
        assert k.nftables == ("nftables" if series >= MIN_NFTABLES_KERNEL else "iptables"), k
    assert [k.nftables for k in MATRIX.kernels] == ["nftables"] * 4


def test_kernels_yaml_has_sids_7x_row_beside_the_stable_ones():
    by_name = {k.name: k for k in MATRIX.kernels}
    sid = by_name["debian-sid-7.x"]
    assert sid.suite == "sid" and (sid.series == "7" or sid.series.startswith("7.")) and sid.engine == "ebpf" and sid.ci
    assert sid.cpu == "max,-cx16"
    assert not sid.check_valid_until  # sid's Release file outlives its Valid-Until on a mirror snapshot
    # the others keep the check (stable suites carry no Valid-Until; backports' was fresh here)
    assert all(k.check_valid_until for k in MATRIX.kernels if k.suite != "sid")
    assert [k.name for k in MATRIX.kernels[:3]] == ["debian11-5.10", "debian12-6.1", "debian12-bpo-6.12"]


def test_kernels_yaml_errors_name_the_problem(tmp_path):
    bad = tmp_path / "kernels.yaml"
    bad.write_text("kernels:\n  - {name: a, suite: s, series: '5.10', engine: nope}\n"
                   "fallbacks:\n  - {name: f, guest: b, condition: uname-2.6, engine: iptables, reason: kernel}\n"
                   "tests: [tests]\n")
    with pytest.raises(kernels.MatrixError) as err:
        kernels.load(str(bad))
    assert "engine nope" in str(err.value) and "`guest: b` names no kernel" in str(err.value)
    assert "a: `nftables: ` (what --nftables-enabled must choose) is not one of" in str(err.value)
    bad.write_text("kernels:\n  - {name: a, suite: s, series: '5.10', engine: ebpf, nftables: ebpf}\ntests: [tests]\n")
    with pytest.raises(kernels.MatrixError, match="a: `nftables: ebpf`"):
        kernels.load(str(bad))
    bad.write_text("kernels:\n  - {name: a, suite: s, series: '5.10', engine: ebpf, nftables: iptables}\n"
                   "tests: [tests]\n")
    assert kernels.load(str(bad)).kernels[0].nftables == "iptables"
