"""python-iptables is imported without running the compiler (engine/iptables/iptc_loader.py).

A gcc, cc and ld first on PATH record each run: ctypes.util.find_library runs them when ldconfig
does not know a library, which under software emulation cost minutes per legacy install.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.iptables import iptc_loader

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def recording_toolchain(tmp_path):
    """(environment whose PATH starts with a recording gcc/cc/ld, the file they append to)."""
    bin_dir, ran = tmp_path / "bin", tmp_path / "ran"
    bin_dir.mkdir()
    for tool in ("gcc", "cc", "ld"):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\necho {tool} >> {ran}\nexit 1\n")
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("IPTABLES_LIBDIR", "XTABLES_LIBDIR")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = REPO
    return env, ran


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_plain_import_runs_the_compiler_which_is_what_the_loader_avoids(recording_toolchain):
    env, ran = recording_toolchain
    result = run_python("import iptc", env)
    assert result.returncode == 0, result.stderr
    assert "gcc" in ran.read_text().split(), "python-iptables' library search no longer runs gcc: is the loader needed?"


def test_the_loader_imports_a_working_python_iptables_without_the_compiler(recording_toolchain):
    env, ran = recording_toolchain
    # a rule with an extension match and target: the extension directory the loader named is right
    code = ("from engine.iptables import iptc_loader\n"
            "iptc = iptc_loader.load()\n"
            "rule = iptc.Rule(); rule.protocol = 'tcp'\n"
            "rule.create_match('comment').comment = 'tpctl'\n"
            "rule.create_match('tcp').dport = '15001'\n"
            "rule.create_target('REDIRECT').to_ports = '15001'\n"
            "print(rule.target.name, rule.matches[0].comment)\n")
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["REDIRECT", "tpctl"]
    assert not ran.exists(), f"the loader's import ran {ran.read_text().split()}"


def test_the_directories_named_are_the_real_ones_and_a_users_own_choice_wins():
    found = iptc_loader.library_dirs({})
    assert any(name.startswith("libxtwrapper") for name in os.listdir(found["IPTABLES_LIBDIR"]))
    assert os.path.exists(os.path.join(found["XTABLES_LIBDIR"], "libxt_comment.so"))
    assert iptc_loader.library_dirs({"IPTABLES_LIBDIR": "/opt/x", "XTABLES_LIBDIR": "/opt/y"}) == {}
