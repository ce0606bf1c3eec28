"""feature_checks: real probes on this host (root) and an old kernel faked with setarch."""
import json
import os
import subprocess
import sys

from ebpf_lab import REPO, root_only

from ebpf.engine import feature_checks


@root_only
def test_feature_checks_pass_here():
    checks = {c.name: c for c in feature_checks(None)}
    failed = [c for c in checks.values() if c.required and not c.ok]
    assert not failed, failed
    assert checks["prog:tp_sock4_getpeername"].ok  # 5.8+ optional feature, present here


def test_old_kernel_is_reported_with_a_fix():
    code = ("import json,sys; sys.path.insert(0, %r); from ebpf.probe import check_kernel; "
            "c = check_kernel(); print(json.dumps([c.ok, c.detail, c.fix]))" % REPO)
    out = subprocess.run(["setarch", os.uname().machine, "--uname-2.6", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True)
    ok, detail, fix = json.loads(out.stdout)
    assert not ok and "2.6" in detail and fix
