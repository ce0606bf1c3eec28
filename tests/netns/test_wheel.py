"""A wheel that works: built from this checkout, installed non-editable into a fresh venv, run
from outside the checkout. Its eBPF checks compile and load the programs from the installed
bpf_src/; the sandbox (the demo's and the tests' throwaway topology) is not in it."""
from __future__ import annotations

import glob
import os
import site
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work), REPO], check=True, timeout=300, cwd=str(work))
    wheel = glob.glob(str(work / "tpctl-*.whl"))
    assert len(wheel) == 1, wheel
    venv = work / "venv"
    # --system-site-packages: BCC's Python bindings come from the distribution, as in setup.sh
    subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    # Offline (the userland matrix runs its tests without a network): the wheel alone, its
    # dependencies (click, pyroute2, ...) seen from this venv through a path line. A path in a .pth
    # file is only appended to sys.path, its own .pth files (the editable install's entry for this
    # checkout) are not run, and the fresh venv's site-packages comes first: tpctl is imported from
    # the wheel.
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-index", wheel[0]], check=True, timeout=600)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    with open(os.path.join(purelib, "tpctl-test-deps.pth"), "w") as handle:
        handle.write("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_installed_package_carries_bpf_src_and_not_the_sandbox(installed):
    wheel, = glob.glob(str(installed.parent / "tpctl-*.whl"))
    assert [n for n in zipfile.ZipFile(wheel).namelist() if n.split("/")[0] == "sandbox"] == []
    code = ("import ebpf.settings as s, importlib.util as u, os; "
            "print(s.DEFAULT_SOURCE_PATH); print(u.find_spec('sandbox')); print(sorted(os.listdir(s.DEFAULT_SOURCE_PATH)))")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=True, cwd="/", timeout=60).stdout.splitlines()
    assert out[0].startswith(str(installed)) and out[1] == "None", out
    assert "tp_getsockopt.c" in out[2] and "include" in out[2]


def test_the_installed_tpctl_compiles_and_loads_its_programs_in_the_ebpf_checks(installed, sandbox):
    argv = [str(installed / "bin" / "tpctl"), "install", "--experimental-transparent-proxy-engine",
            "--ebpf-enabled", "--no-fallback", "--dry-run", "--kuma-dp-user", "5678",
            "--ebpf-cgroup-path", sandbox.cgroup, "--ebpf-bpffs-path", sandbox.mount_bpffs(),
            "--ebpf-tc-attach-iface", sandbox.app_if, "--state-dir", sandbox.state_dir]
    result = sandbox.run(sandbox.app, ["sh", "-c", 'cd / && exec "$@"', "sh", *argv], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "every eBPF check passed" in result.stderr
    bpf_src = os.path.join(str(installed), "lib")
    assert f"# tpctl eBPF plan: sources {bpf_src}" in result.stdout  # the wheel's bpf_src, not the checkout's


def test_the_installed_tpctl_demo_says_it_runs_from_a_checkout(installed):
    result = subprocess.run([str(installed / "bin" / "tpctl"), "demo"], capture_output=True, text=True,
                            cwd="/", timeout=60)
    assert (result.returncode, result.stderr) == (2, "Error: the demo runs from a checkout: make demo\n"), result
