"""feature_checks: real probes on this host (root) and an old kernel faked with setarch."""
import json
import os
import subprocess
import sys

from ebpf_lab import REPO, root_only

from ebpf.engine import feature_checks


@root_only
def test_feature_checks_pass_here():
    from ebpf.settings import EbpfSettings

    checks = {c.name: c for c in feature_checks(EbpfSettings(cgroup_path=None, bpffs_path=None))}
    failed = [c for c in checks.values() if c.required and not c.ok]
    assert not failed, failed
    assert checks["prog:tp_sock4_getpeername"].ok  # 5.8+ optional feature, present here
    assert checks["load"].ok and checks["compile"].ok  # the real programs, as this install loads them


def test_old_kernel_is_reported_with_a_fix():
    code = ("import json,sys; sys.path.insert(0, %r); from ebpf.probe import check_kernel; "
            "c = check_kernel(); print(json.dumps([c.ok, c.detail, c.fix]))" % REPO)
    out = subprocess.run(["setarch", os.uname().machine, "--uname-2.6", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True)
    ok, detail, fix = json.loads(out.stdout)
    assert not ok and "2.6" in detail and fix


@root_only
def test_every_program_compiles_and_loads_with_the_bcc_and_llvm_at_hand():
    """The verifier judges what this host's LLVM emitted: each userland of the matrix (BCC 0.18 /
    LLVM 11 to sid's) proves its compiler here. sk_msg is compiled where this BCC can
    (--ebpf-sk-msg-accel needs BCC >= 0.21); an optional program may be refused only by a kernel
    without its hook (getpeername before 5.8)."""
    from ebpf.catalogue import PROGRAMS
    from ebpf.compile import compile_object, sources_for
    from ebpf.errors import EbpfLoadError
    from ebpf.load import load_program
    from ebpf.probe import bcc_compiles_accel, check_program_types
    from ebpf.settings import DEFAULT_SOURCE_PATH

    sources = sources_for(bcc_compiles_accel())
    bpf = compile_object(DEFAULT_SOURCE_PATH, sources=sources)
    kernel_has = {c.name[len("prog:"):]: c.ok for c in check_program_types()}
    loaded, refused = [], {}
    try:
        for prog in PROGRAMS:
            if prog.source not in sources:
                continue
            try:
                load_program(bpf, prog)
                loaded.append(prog.name)
            except EbpfLoadError as err:
                refused[prog.name] = str(err)[-600:]
    finally:
        bpf.cleanup()
    unexpected = {name: why for name, why in refused.items()
                  if kernel_has.get(name, True) or not next(p for p in PROGRAMS if p.name == name).optional}
    assert not unexpected, unexpected
    assert "tp_getsockopt" in loaded and "tp_sockops" in loaded and "tp_sock4_connect" in loaded
