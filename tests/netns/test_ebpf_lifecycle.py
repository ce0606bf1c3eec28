"""The eBPF engine through the CLI: uninstall leaves nothing, rollback, status, fallback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ebpf.pins import is_bpffs
from tests.netns.conftest import install, install_args


def kernel_name(program: str) -> str:
    """A program's name as `bpftool cgroup show` prints it on every BCC: the kernel keeps 15
    characters (BPF_OBJ_NAME_LEN); bpftool shows the whole name only from the program's BTF,
    which BCC 0.18's load path (ebpf/load.py) does not pass."""
    return program[:15]


def ebpf_view(sandbox) -> dict:
    """Everything of the eBPF engine the kernel could still hold for this sandbox."""
    def run(*argv, ns=None):
        cmd = (["nsenter", f"--net=/run/netns/{ns}"] if ns else []) + list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout

    pins = sorted(os.path.relpath(os.path.join(root, name), sandbox.bpffs)
                  for root, dirs, files in os.walk(sandbox.bpffs) for name in dirs + files) if sandbox.bpffs else []
    return {
        "cgroup programs": run("bpftool", "cgroup", "show", sandbox.cgroup),
        "tc ingress": run("tc", "filter", "show", "dev", sandbox.app_if, "ingress", ns=sandbox.app),
        "tc egress": run("tc", "filter", "show", "dev", sandbox.app_if, "egress", ns=sandbox.app),
        "qdiscs": run("tc", "qdisc", "show", "dev", sandbox.app_if, ns=sandbox.app),
        "bpffs": pins,
        "lo addresses": run("ip", "-6", "addr", "show", "dev", "lo", ns=sandbox.app),
    }


@pytest.fixture
def before(sandbox):
    sandbox.mount_bpffs()
    return ebpf_view(sandbox)


def test_install_attaches_and_uninstall_leaves_nothing(sandbox, before):
    install(sandbox, "ebpf")
    during = ebpf_view(sandbox)
    assert kernel_name("tp_sock4_connect") in during["cgroup programs"] and "tp_getsockopt" in during["cgroup programs"]
    assert "tp_tc_ingress" in during["tc ingress"] and "tpctl" in during["bpffs"]
    result = sandbox.tpctl("uninstall")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr  # its own install: nothing to refuse or report
    assert ebpf_view(sandbox) == before
    assert is_bpffs(sandbox.bpffs), "uninstall unmounted a bpffs it did not mount"


def test_a_bpffs_that_install_mounted_is_unmounted_by_uninstall(sandbox, before):
    path = os.path.join(sandbox.tmp, "bpffs-mounted-by-install")
    os.mkdir(path)
    try:
        install(sandbox, "ebpf", "--ebpf-bpffs-path", path)  # the last --ebpf-bpffs-path wins
        assert is_bpffs(path) and os.path.isdir(os.path.join(path, "tpctl"))
        result = sandbox.tpctl("uninstall", "--verbose")
        assert result.returncode == 0, result.stderr
        assert f"unmounted bpffs {path}" in result.stdout + result.stderr
        assert not is_bpffs(path)
        assert ebpf_view(sandbox) == before
    finally:
        if is_bpffs(path):
            subprocess.run(["umount", path], timeout=30)


def test_a_busy_bpffs_is_left_mounted_with_a_warning_after_everything_else_is_removed(sandbox, before):
    path = os.path.join(sandbox.tmp, "bpffs-busy")
    os.mkdir(path)
    holder = None
    try:
        install(sandbox, "ebpf", "--ebpf-bpffs-path", path)
        holder = subprocess.Popen(["sleep", "60"], cwd=path)  # a shell cd'ed into it: umount says EBUSY
        result = sandbox.tpctl("uninstall")
        assert result.returncode == 0, result.stderr
        assert f"left the bpffs at {path} mounted" in result.stderr and f"umount {path}" in result.stderr
        assert is_bpffs(path) and not os.path.exists(os.path.join(path, "tpctl"))
        assert ebpf_view(sandbox) == before  # programs, tc, the sandbox's own bpffs: all as before
        assert not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(timeout=30)
        if is_bpffs(path):
            subprocess.run(["umount", path], timeout=30)


def test_uninstall_from_the_pins_alone_when_the_state_file_is_gone(sandbox, before):
    install(sandbox, "ebpf")
    os.unlink(os.path.join(sandbox.state_dir, "state.json"))
    assert sandbox.tpctl("uninstall", "--ebpf-bpffs-path", sandbox.bpffs).returncode == 0
    after = ebpf_view(sandbox)
    assert {k: v for k, v in after.items() if k != "lo addresses"} == \
           {k: v for k, v in before.items() if k != "lo addresses"}  # ::6 is only removed when recorded


@pytest.mark.parametrize("step", ["compile", "attach:tp_sock4_connect", "tc:filter:tp_tc_ingress", "meta"])
def test_a_failure_at_any_step_rolls_back_to_exactly_before(sandbox, before, step):
    result = sandbox.tpctl(*install_args("ebpf", sandbox), env={"TPCTL_FAULT_INJECT": step})
    assert result.returncode == 4, result.stderr
    assert ebpf_view(sandbox) == before
    assert not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


def test_status_reads_settings_back_from_the_kernel_and_finds_drift(sandbox, before):
    install(sandbox, "ebpf", "--exclude-outbound-ports", "9001")
    result = sandbox.tpctl("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["engine"] == "ebpf" and report["drift"] == []
    assert report["ebpf"]["programs"]["tp_sock4_connect"] == "attached"
    assert "9001" in json.dumps(report["ebpf"]["settings"])
    prog_id = report["ebpf"]["programs"] and json.loads(
        open(os.path.join(sandbox.state_dir, "state.json")).read())["ebpf"]["prog_ids"]["tp_sock4_connect"]
    subprocess.run(["bpftool", "cgroup", "detach", sandbox.cgroup, "connect4", "id", str(prog_id)], check=True)
    result = sandbox.tpctl("status")
    assert result.returncode == 5 and "tp_sock4_connect" in result.stderr


def test_dry_run_prints_the_ebpf_plan_and_changes_nothing(sandbox, before):
    result = sandbox.tpctl(*install_args("ebpf", sandbox, "--dry-run"))
    assert result.returncode == 0, result.stderr
    assert "tp_sock4_connect" in result.stdout
    assert ebpf_view(sandbox) == before


def _install_in(sandbox, wrapper: list[str], *extra: str) -> subprocess.CompletedProcess:
    """tpctl install --ebpf-enabled (with --no-fallback only when `extra` says so), as the
    sandbox runs it, under an OS-level wrapper (setarch, unshare)."""
    args = [a for a in install_args("ebpf", sandbox) if a != "--no-fallback"] + list(extra)
    argv = ["nsenter", f"--net=/run/netns/{sandbox.app}", "--", sys.executable, "-m", "engine.cli", *args]
    env = {**os.environ, "TPCTL_STATE_DIR": sandbox.state_dir}
    return subprocess.run([*wrapper, *argv], capture_output=True, text=True, timeout=180, env=env)


OLD_KERNEL = ["setarch", "x86_64", "--uname-2.6"]
NO_HEADERS = ["unshare", "--mount", "--", "sh", "-c",
              'mount -t tmpfs none /usr/src && mount -t tmpfs none /lib/modules && exec "$@"', "sh"]
NO_CGROUP2 = ["unshare", "--mount", "--", "sh", "-c",
              'for m in $(awk \'$3=="cgroup2"{print $2}\' /proc/mounts); do umount -l "$m"; done; exec "$@"', "sh"]


@pytest.mark.parametrize("wrapper, check", [(OLD_KERNEL, "kernel"), (NO_HEADERS, "headers"),
                                            (NO_CGROUP2, "cgroup2")], ids=["old-kernel", "no-headers", "no-cgroup2"])
def test_a_failed_check_falls_back_to_iptables_saying_why(sandbox, before, wrapper, check):
    extra = ["--ebpf-cgroup-path", "auto"] if wrapper is NO_CGROUP2 else []
    result = _install_in(sandbox, wrapper, *extra)
    assert result.returncode == 0, result.stderr
    assert "falling back to iptables" in result.stderr and f"{check}" in result.stderr
    assert json.loads(sandbox.tpctl("status", "--json").stdout)["engine"] == "iptables"
    assert sandbox.tpctl("uninstall").returncode == 0
    result_no_fallback = _install_in(sandbox, wrapper, *extra, "--no-fallback")
    assert result_no_fallback.returncode == 3, result_no_fallback.stderr
    assert check in result_no_fallback.stderr
    assert ebpf_view(sandbox) == before and not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


def test_a_flag_ebpf_cannot_honour_falls_back_instead_of_being_ignored(sandbox, before):
    result = sandbox.tpctl(*install_args("ebpf", sandbox, "--vnet", "br+:172.18.0.0/16"))
    assert result.returncode == 3 and "--vnet" in result.stderr  # install_args carries --no-fallback
    flags = [a for a in install_args("ebpf", sandbox, "--vnet", "br+:172.18.0.0/16") if a != "--no-fallback"]
    result = sandbox.tpctl(*flags)
    assert result.returncode == 0 and "falling back to iptables" in result.stderr and "--vnet" in result.stderr


def test_programs_source_path_compiles_another_bpf_src_and_a_missing_one_is_a_failed_check(sandbox, before):
    import shutil

    copy = os.path.join(sandbox.tmp, "my_bpf_src")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "..", "bpf_src"), copy)
    install(sandbox, "ebpf", "--ebpf-programs-source-path", copy)
    assert kernel_name("tp_sock4_connect") in ebpf_view(sandbox)["cgroup programs"]
    assert sandbox.tpctl("uninstall").returncode == 0
    result = sandbox.tpctl(*install_args("ebpf", sandbox, "--ebpf-programs-source-path", copy + "-missing"))
    assert result.returncode == 3 and "programs source" in result.stderr
    assert ebpf_view(sandbox) == before


def test_more_uid_rules_than_the_map_holds_is_a_failed_check_naming_the_flag(sandbox, before):
    """Lists the eBPF maps cannot hold fall back (exit 3 with --no-fallback), not a crash. Every
    list flag is capped below the CIDR tries' size (docs/hostile-input.md), so the uid rules'
    map, 16 rows, is the one a valid config can overflow."""
    from ebpf.maps import MAX_UID_RANGES

    rules = ";".join(f"tcp:{1000 + i}:{2000 + i}" for i in range(MAX_UID_RANGES + 1))
    result = sandbox.tpctl(*install_args("ebpf", sandbox, "--exclude-outbound-ports-for-uids", rules, "--dry-run"))
    assert result.returncode == 3, result.stderr
    assert "eBPF maps" in result.stderr and "--exclude-outbound-ports-for-uids" in result.stderr, result.stderr
    assert ebpf_view(sandbox) == before


def test_programs_that_do_not_compile_here_are_a_failed_check_so_iptables_is_chosen(sandbox, before):
    """Headers can exist and still be ones this BCC cannot compile against (6.12's with BCC 0.26,
    bcc#5231): the compile is a feature check, so it falls back instead of failing install."""
    import shutil

    copy = os.path.join(sandbox.tmp, "uncompilable_bpf_src")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "..", "bpf_src"), copy)
    with open(os.path.join(copy, "tp_tc.c"), "a") as handle:
        handle.write("\nstatic int tp_not_c = no_such_symbol;\n")
    args = [a for a in install_args("ebpf", sandbox, "--ebpf-programs-source-path", copy) if a != "--no-fallback"]
    result = sandbox.tpctl(*args)
    assert result.returncode == 0, result.stderr
    assert "falling back to iptables" in result.stderr and "compile" in result.stderr
    assert "no_such_symbol" in result.stderr  # the compiler's first error, so the user sees why
    assert json.loads(sandbox.tpctl("status", "--json").stdout)["engine"] == "iptables"
    assert sandbox.tpctl("uninstall").returncode == 0
    result = sandbox.tpctl(*install_args("ebpf", sandbox, "--ebpf-programs-source-path", copy))
    assert result.returncode == 3 and "compile" in result.stderr
    assert ebpf_view(sandbox) == before and not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))


# What LLVM 19 (Debian 13) made of tp_getsockopt.c before its reads went through TP_CTX_U32: a
# load from the bpf_sock pointer plus a register. Written as asm so every LLVM emits it as is.
REFUSED_BY_THE_VERIFIER = """
	if (sk && ctx->optname == 4242) {
		__u64 v, p;
		asm volatile("%1 = %2; %1 += %3; %0 = *(u32 *)(%1 + 0)"
			     : "=r"(v), "=&r"(p) : "r"(sk), "r"((__u64)ctx->level));
		return v & 1;
	}
"""


def test_programs_the_verifier_refuses_are_a_failed_check_so_iptables_is_chosen(sandbox, before):
    """The verifier judges the code this host's LLVM emitted: loading is a check, so such a host
    gets iptables and the verifier's decisive line, never an install that fails with exit 4."""
    import shutil

    copy = os.path.join(sandbox.tmp, "refused_bpf_src")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "..", "bpf_src"), copy)
    path = os.path.join(copy, "tp_getsockopt.c")
    with open(path) as handle:
        text = handle.read()
    anchor = "\tif (ctx->optname != TP_SO_ORIGINAL_DST ||"
    assert anchor in text
    with open(path, "w") as handle:
        handle.write(text.replace(anchor, REFUSED_BY_THE_VERIFIER + anchor, 1))
    args = [a for a in install_args("ebpf", sandbox, "--ebpf-programs-source-path", copy) if a != "--no-fallback"]
    result = sandbox.tpctl(*args)
    assert result.returncode == 0, result.stderr
    assert "falling back to iptables" in result.stderr and "[FAIL] load" in result.stderr
    assert "tp_getsockopt" in result.stderr and "pointer arithmetic on sock prohibited" in result.stderr
    assert json.loads(sandbox.tpctl("status", "--json").stdout)["engine"] == "iptables"
    assert sandbox.tpctl("uninstall").returncode == 0
    result = sandbox.tpctl(*install_args("ebpf", sandbox, "--ebpf-programs-source-path", copy))
    assert result.returncode == 3 and "[FAIL] load" in result.stderr
    assert ebpf_view(sandbox) == before and not os.path.exists(os.path.join(sandbox.state_dir, "state.json"))
