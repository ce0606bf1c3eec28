"""No-root tests: the catalogue, map layouts against the C structs, plan, amalgamation."""
import ctypes as ct
import os
import shutil
import subprocess

import pytest
from ebpf_lab import REPO  # noqa: F401  (puts the repo on sys.path)

from ebpf import catalogue, maps
from ebpf.compile import amalgamate, find_kernel_headers
from ebpf.errors import HeadersNotFound
from ebpf.plan import EbpfPlanError, plan
from ebpf.settings import DEFAULT_SOURCE_PATH, EbpfSettings

SRC = DEFAULT_SOURCE_PATH
STRUCTS = {
    "tp_settings": maps.TpSettings, "tp_uid_port_range": maps.TpUidPortRange,
    "tp_lpm_v4": maps.TpLpmV4, "tp_lpm_v6": maps.TpLpmV6, "tp_orig": maps.TpOrig,
    "tp_tuple": maps.TpTuple, "tp_in_flow": maps.TpInFlow,
    "tp_install_meta": maps.TpInstallMeta,
}


def test_catalogue_programs_exist_in_their_source():
    names = [p.name for p in catalogue.PROGRAMS]
    assert len(names) == len(set(names))
    for prog in catalogue.PROGRAMS:
        assert prog.name.startswith("tp_")
        text = open(os.path.join(SRC, prog.source)).read()
        assert f"int {prog.name}(" in text, prog
        if prog.prog_type in (catalogue.PROG_CGROUP_SOCK_ADDR, catalogue.PROG_CGROUP_SOCKOPT,
                              catalogue.PROG_SOCK_OPS):
            assert prog.attach_type in catalogue.ATTACH_TYPE_NAMES


def test_every_map_is_declared_once_with_a_why_comment():
    text = open(os.path.join(SRC, "include", "tp_maps.h")).read()
    blocks = text.split("/* Why:")[1:]
    assert len(blocks) == len(catalogue.MAPS) - 4  # v4/v6 pairs share one comment
    for name in catalogue.MAPS:
        assert text.count(f"({name},") + text.count(f", {name},") == 1, name


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_ctypes_layouts_match_the_c_structs(tmp_path):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "tp_types.h"', "int main(void){"]
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof(struct {cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof(struct {cname}, {field}));')
    lines.append("return 0;}")
    (tmp_path / "check.c").write_text("\n".join(lines))
    subprocess.run(["cc", "-I", os.path.join(SRC, "include"), "-o", str(tmp_path / "check"),
                    str(tmp_path / "check.c")], check=True)
    out = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        cname, what, value = line.split()
        cls = STRUCTS[cname]
        got = ct.sizeof(cls) if what == "size" else getattr(cls, what).offset
        assert got == int(value), line


def test_layouts_round_trip():
    lay = maps.LAYOUTS["tp_excl_out_v4"]
    assert lay.decode_key(lay.encode_key("10.1.2.3/8")) == "10.0.0.0/8"
    lay = maps.LAYOUTS["tp_instance_v6"]
    assert lay.decode_key(lay.encode_key("2001:2::1")) == "2001:2::1"
    lay = maps.LAYOUTS["tp_dns_v4"]
    assert lay.decode_key(lay.encode_key("198.18.0.2")) == "198.18.0.2"
    # network byte order, as the kernel compares it
    assert bytes(lay.encode_key("198.18.0.2")) == bytes([198, 18, 0, 2])


def test_plan_is_data_and_renders():
    s = EbpfSettings(exclude_outbound_cidrs=("198.18.1.0/24", "2001:2::/48"),
                     exclude_outbound_ports_for_uids=(("tcp", 22, 22, 1000, 2000),),
                     redirect_dns="servers", dns_servers=("198.18.0.2",), tc_iface="eth0",
                     instance_ips=("198.18.0.1",), cgroup_path="/sys/fs/cgroup/unified",
                     bpffs_path="/run/tpctl-bpffs", accel=True)
    p = plan(s)
    entries = {m.map: m.entries for m in p.maps}
    assert entries["tp_excl_out_v4"] == (("198.18.1.0/24", 1),)
    assert entries["tp_excl_out_v6"] == (("2001:2::/48", 1),)
    assert entries["tp_settings"][0][1]["uid_range_count"] == 1
    order = [a.program for a in p.attachments]
    assert order[0] == "tp_sk_msg" and order.index("tp_sockops") < order.index("tp_sock4_connect")
    assert {"tp_tc_ingress", "tp_tc_egress", "tp_sock4_sendmsg"} <= set(order)
    text = p.render()
    assert "map tp_excl_out_v4 [198.18.1.0/24] = 1" in text
    assert "attach tp_tc_ingress tc-ingress eth0" in text
    assert p.pin_dir == "/run/tpctl-bpffs/tpctl"


def test_plan_drops_what_is_off():
    p = plan(EbpfSettings(redirect_dns="off", tc_iface=None, accel=False))
    names = {prog.name for prog in p.programs}
    assert "tp_sk_msg" not in names and "tp_tc_ingress" not in names
    assert "tp_sock4_sendmsg" not in names and "tp_sock4_connect" in names


@pytest.mark.parametrize("bad", [dict(outbound_port=0), dict(redirect_dns="some"),
                                 dict(exclude_outbound_cidrs=("nope",)),
                                 dict(exclude_outbound_ports_for_uids=(("icmp", 1, 1, 1, 1),))])
def test_plan_rejects_bad_settings(bad):
    with pytest.raises(EbpfPlanError):
        plan(EbpfSettings(**bad))


def test_amalgamation_keeps_file_and_line():
    text = amalgamate(SRC)
    assert f'#line 1 "{os.path.realpath(os.path.join(SRC, "tp_connect.c"))}"' in text
    assert text.count("BPF_ARRAY(tp_settings") == 1  # headers inlined once
    for prog in catalogue.PROGRAMS:
        assert f"int {prog.name}(" in text


def test_header_discovery_on_a_fake_tree(tmp_path):
    amd = tmp_path / "src/linux-headers-6.1.0-9-amd64"
    common = tmp_path / "src/linux-headers-6.1.0-9-common"
    (amd / "arch/x86/include/generated/uapi").mkdir(parents=True)
    (amd / "include/generated/uapi").mkdir(parents=True)
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("")
    h = find_kernel_headers("6.18.0-x", "x86_64", str(tmp_path / "src"), str(tmp_path / "mod"))
    assert h.env == {"BCC_KERNEL_SOURCE": str(common)}
    assert f"-I{amd}/arch/x86/include/generated/uapi" in h.cflags
    with pytest.raises(HeadersNotFound):
        find_kernel_headers("6.18.0-x", "x86_64", str(tmp_path / "none"), str(tmp_path / "mod"))


def test_plan_refuses_more_cidrs_than_the_map_holds():
    from ebpf.maps import MAX_CIDRS
    fits = tuple(f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(MAX_CIDRS))
    assert len(plan(EbpfSettings(exclude_outbound_cidrs=fits)).maps) > 0
    with pytest.raises(EbpfPlanError, match="exclude_outbound_cidrs: 65537 IPv4 CIDRs"):
        plan(EbpfSettings(exclude_outbound_cidrs=fits + ("11.0.0.0/8",)))


def test_bpf_sources_include_only_uapi_headers():
    """A kernel-internal header (linux/tcp.h → net/sock.h → linux/bpf.h) breaks BCC 0.26 on 6.12's
    headers (bcc#5231); UAPI headers are the stable contract, and all the programs need."""
    import re

    system = re.compile(r"^\s*#\s*include\s+<([^>]+)>", re.M)
    # tp_types.h is also built by the host compiler (the layout test), whose include path has no
    # uapi/ prefix; in a kernel tree linux/types.h adds typedefs only.
    allowed = {"linux/types.h"}
    for folder, _, files in os.walk(SRC):
        for name in files:
            for header in system.findall(open(os.path.join(folder, name)).read()):
                assert header.startswith("uapi/") or header in allowed, f"{name}: #include <{header}> is not a UAPI header"


def test_install_reuses_the_object_the_compile_check_made(monkeypatch):
    from ebpf import compile as compile_mod

    made = []
    monkeypatch.setattr(compile_mod, "compile_object", lambda src, sources: made.append(sources) or object())
    monkeypatch.setattr(compile_mod, "_checked", {})
    plain = compile_mod.sources_for(accel=False)
    first = compile_mod.compile_for_check(SRC, plain)
    assert compile_mod.compile_for_check(SRC, plain) is first  # a second check does not compile again
    assert compile_mod.take_compiled(SRC, plain) is first and len(made) == 1
    assert compile_mod.take_compiled(SRC, plain) is not first and len(made) == 2  # taken once only


def test_sk_msg_is_compiled_only_when_acceleration_is_asked_for():
    """BCC 0.18 (Debian 11) has no map.msg_redirect_hash(): an install without
    --ebpf-sk-msg-accel must not need it."""
    from ebpf import compile as compile_mod
    from ebpf.catalogue import ACCEL_SOURCE, SOURCES

    assert ACCEL_SOURCE not in compile_mod.sources_for(accel=False)
    assert compile_mod.sources_for(accel=True) == SOURCES
    assert "tp_sock_hash.msg_redirect_hash(" not in amalgamate(SRC, compile_mod.sources_for(accel=False))


def test_the_verifier_verdict_is_the_judged_instruction_and_the_reason():
    from ebpf.probe import verifier_verdict

    log = ("kernel refused tp_getsockopt (Failed to load BPF program b'tp_getsockopt': Permission denied):\n"
           "61: (bf) r2 = r1\n62: (0f) r2 += r3\nR2 pointer arithmetic on sock prohibited\n"
           "processed 62 insns (limit 1000000) max_states_per_insn 0 total_states 4 peak_states 4\n")
    assert verifier_verdict(log) == "62: (0f) r2 += r3 / R2 pointer arithmetic on sock prohibited"
    assert verifier_verdict("refused (no log)") == "refused (no log)"


def test_context_fields_are_read_through_tp_ctx_only():
    """LLVM 19 merged plain `sk->src_ip4` / `sk->src_ip6[0]` reads of two branches into pointer
    arithmetic the verifier refuses: every address field of a context or bpf_sock goes through
    TP_CTX_U32 / TP_CTX_IP6 / TP_CTX_SET_*, one constant-offset load or store each."""
    import re

    plain = re.compile(r"(->|\.)(src_ip[46]|dst_ip[46]|local_ip[46]|remote_ip[46]|user_ip6)\b")
    for folder, _, files in os.walk(SRC):
        for name in files:
            for lineno, line in enumerate(open(os.path.join(folder, name)), 1):
                if name != "tp_ctx.h" and not line.lstrip().startswith(("*", "/*")):
                    assert not plain.search(line), f"{name}:{lineno}: {line.strip()}"


@pytest.mark.parametrize("link_type, l3_iface", [(1, 0), (772, 0), (65534, 1)])
def test_plan_takes_the_link_header_from_the_tc_interface_link_type(link_type, l3_iface):
    p = plan(EbpfSettings(tc_iface="wg0", tc_link_type=link_type))
    assert {m.map: m.entries for m in p.maps}["tp_settings"][0][1]["l3_iface"] == l3_iface


@pytest.mark.parametrize("link_type, said", [(768, "is 768"), (None, "cannot be read")])
def test_plan_refuses_tc_on_a_link_type_it_does_not_know(link_type, said):
    """ipip (768) may show its outer IP header at tc ingress: refused (a failed check, so the
    choice falls back), never guessed."""
    with pytest.raises(EbpfPlanError, match=f"tc_iface: the link type \\(ARPHRD\\) of ip0 {said}"):
        plan(EbpfSettings(tc_iface="ip0", tc_link_type=link_type))
    off = plan(EbpfSettings(tc_iface="ip0", tc_link_type=link_type, redirect_inbound=False))
    assert {m.map: m.entries for m in off.maps}["tp_settings"][0][1]["l3_iface"] == 0


def test_the_link_type_is_read_from_this_namespace():
    from ebpf.settings import interface_link_type

    assert interface_link_type("lo") == 772
    assert interface_link_type("tpctl-none0") is None


def test_drop_reasons_follow_the_c_defines():
    import re

    text = open(os.path.join(SRC, "include", "tp_types.h")).read()
    defined = dict(re.findall(r"#define TP_DROP_(\w+) (\d+)", text))
    assert int(defined.pop("REASONS")) == len(maps.DROP_REASONS)
    assert sorted(defined, key=lambda name: int(defined[name])) == \
        ["V4_FRAGMENT", "V6_FRAGMENT", "HEADER_CHAIN", "V6_ROUTED"]
    assert maps.DROP_REASONS == ("ipv4_fragment", "ipv6_fragment", "header_chain", "ipv6_routed")
    assert maps.DROPS_MAP in catalogue.MAPS


def test_possible_cpus_counts_every_range(tmp_path):
    (tmp_path / "possible").write_text("0-3,8-11,16\n")
    assert maps.possible_cpus(str(tmp_path / "possible")) == 9
