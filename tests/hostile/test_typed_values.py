"""Random text through every install option (engine/options.py's table), pure: each value is
refused (a ConfigError naming the flag, exit 2 through the CLI) or typed, and then every engine's
rendered plan holds exactly the rules, chains and set elements the typed value implies, and
nothing else: balanced quotes, one rule per line, no control character (docs/hostile-input.md).
The same cases against the real tools: test_injection.py."""
from __future__ import annotations

import os
import re
import shlex

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpf.errors import EbpfError
from engine import config as config_module
from engine import registry
from engine import values as v
from engine.cli import main
from engine.contract import Choice
from engine.errors import ConfigError
from engine.nftables.ruleset import disjoint_networks
from engine.options import INSTALL_OPTIONS
from engine.probe import Backend, HostFacts

EXAMPLES = int(os.environ.get("TPCTL_HOSTILE_EXAMPLES", "300"))
HOSTILE = ["%", "%1", "\n", "\r", "\x00", "\x1b", "\t", " ", ";", "#", '"', "'", "\\", "`", "$(", "{", "}", "*",
           "+", "/", ":", ",", "-", ".", "..", "é", "\u2028", "١", "²", "\ufeff", "COMMIT\n*filter\n-I INPUT 1 -j DROP",
           "-A OUTPUT -j REDIRECT", '";drop#', "\ndrop", "1_0", "0x1f"]
SEEDS = ["10.0.0.1", "10.0.0.0/8", "fe80::1", "fd00::/64", "2001:2::1", "eth0", "br+", "53", "15001", "1000-2000",
         "tcp:53:1000", "udp", "tcp", "*", "true", "false", "auto", "nft", "legacy", "5678", "root", "2s", "500ms",
         "/tmp", "/run/kuma/bpf", "iptables:/usr/sbin/iptables", "docker0:172.17.0.0/16", "dualstack", "ipv4"]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
FAMILIES = (4, 6)


@pytest.fixture(autouse=True)
def _not_root(monkeypatch):
    """A value that got through parsing must not reach a real install (even a dry run) here:
    as a non-root user the CLI stops right after the build, exit 2 "needs root"."""
    monkeypatch.setattr("engine.cli.os.geteuid", lambda: 1000)


def hostile_text():
    pieces = st.sampled_from(HOSTILE) | st.sampled_from(SEEDS) | st.text(max_size=4)
    return st.lists(pieces, min_size=1, max_size=5).map("".join)


def host() -> HostFacts:
    return HostFacts("6.1.0", "/sys/fs/cgroup", (), (Backend("legacy", True, 0), Backend("nft", True, 0)),
                     "nf_tables", {}, ("2001:2::1",), dns_servers=("198.18.0.53", "2001:2::53"),
                     interfaces=({"name": "lo", "index": 1, "up": True, "addresses": ["198.18.0.1"]},))  # lo: on every host


def needs(field: str) -> dict:
    """The other values a field needs to be accepted alone (the cross-flag checks)."""
    if field.startswith("ebpf_") and field != "ebpf_enabled":
        return {"ebpf_enabled": True}
    if field == "no_fallback":
        return {"nftables_enabled": True}
    return {}


def plans(config) -> dict[str, str]:
    """Every engine's rendered plan of `config` (eBPF may refuse what its maps cannot hold)."""
    out = {}
    for name, backend in (("iptables", "nft"), ("nftables", None), ("ebpf", None)):
        engine = registry.get(name)
        assert engine is not None
        try:
            out[name] = engine.plan(config, host(), Choice(name, backend, FAMILIES, (), (), "restore" if backend else None)).render()
        except EbpfError as err:  # the choice falls back to iptables, saying why
            assert name == "ebpf" and re.match(r"(exclude_outbound_ports_for_uids|tc_iface): ", str(err)), err
    return out


def well_formed(rendered: dict[str, str]) -> None:
    """No control character in any plan; iptables: every line a table, chain, rule or COMMIT that
    shlex splits with one comment at most; nft: quotes balanced on every line, one statement each."""
    for name, text in rendered.items():
        assert not CONTROL.search(text), (name, text)
    for line in rendered["iptables"].splitlines():
        if not line or line.startswith("###"):
            continue
        assert re.fullmatch(r"\*(nat|raw|mangle)|COMMIT|-N TPCTL_\w+|-[AI] [A-Z_]+ (\d+ )?(! )?-.*", line), line
        words = shlex.split(line)
        assert words.count("--comment") <= 1 and words.count("-j") == (1 if line.startswith("-") and
                                                                            not line.startswith("-N") else 0), line
    for line in rendered["nftables"].splitlines():
        assert line.count('"') % 2 == 0 and ";" not in line.replace("; policy accept;", "").replace(
            "priority", ""), line
        assert "#" not in line, line


def count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text, re.M))


def set_size(nft: str, name: str) -> int:
    found = re.search(rf"set {name} {{\n[^}}]*?elements = {{ ([^}}]*) }}", nft)
    return len(found.group(1).split(", ")) if found else 0


def implied(field: str, value, rendered: dict[str, str]) -> None:
    """The objects the typed value makes, counted in each engine's plan."""
    ipt, nft = rendered["iptables"], rendered["nftables"]
    if field in ("exclude_outbound_ports", "exclude_inbound_ports"):
        direction = field.split("_")[1]
        assert count(ipt, rf"^-A TPCTL_{direction.upper()} .*exclude {direction} traffic from port") == 2 * len(value)
        assert set_size(nft, f"exclude_{direction}_ports") == len(value)
    elif field in ("exclude_outbound_ips", "exclude_inbound_ips"):
        for family in FAMILIES:
            nets = [n for n in value if n.version == family]
            chain = "OUTPUT" if "outbound" in field else "TPCTL_INBOUND"
            flag = "-d" if "outbound" in field else "-s"
            section = ipt.split(f"### IPv{family} ###")[1].split("###")[0]
            assert count(section, rf"^-[AI] {chain} (\d+ )?{flag} \S+ .*-j RETURN$") == len(nets)
            assert set_size(nft, f"{field.removesuffix('_ips')}_ipv{family}") == len(disjoint_networks(nets))
    elif field == "vnet":
        for family in FAMILIES:
            ifaces = {vn.interface for vn in value if vn.network.version == family}
            section = ipt.split(f"### IPv{family} ###")[1].split("###")[0]
            assert count(section, r"^-I PREROUTING \d+ -.*-i \S+ ") == 2 * len(ifaces)
            assert count(nft, rf'^\t\t(meta nfproto ipv{family} )?iifname "[^"]+" ' +
                         (r"(udp|ip daddr)" if family == 4 else r"(udp|ip6 daddr)")) >= 2 * len(ifaces)
    elif field == "exclude_outbound_ports_for_uids":
        rules = sum(len(e.protocols) for e in value)
        assert count(ipt, r"^-I OUTPUT \d+ -p (tcp|udp) .*-m multiport --dports \S+ -m owner --uid-owner \S+ -j RETURN") \
            == 2 * rules
        assert (set_size(nft, "exclude_outbound_ports_for_uids") > 0) == bool(value)
    elif field == "kuma_dp_user":
        assert f"--uid-owner {value.uid} " in ipt and f"meta skuid {value.uid} return" in nft


def attempt(field: str, text: str):
    """Parse `text` as `field` from a config file key, an environment variable and a flag; the
    value or the ConfigError (all three must agree)."""
    spec = next(s for s in INSTALL_OPTIONS if s.field == field)
    try:
        return config_module.parse_value(field, text, f"--{spec.flag}"), None
    except ConfigError as err:
        assert f"--{spec.flag}" in err.message, err.message
        return None, err


@settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(INSTALL_OPTIONS), text=hostile_text())
def test_every_option_refuses_random_text_or_renders_exactly_what_its_type_implies(spec, text):
    value, refused = attempt(spec.field, text)
    if refused:
        return
    try:
        config = config_module.build({"kuma_dp_user": v.ProxyUser(5678, "kuma-dp"), **needs(spec.field),
                                      spec.field: value})
    except ConfigError as err:  # a cross-flag check (a redirect port excluded, two listeners on one port)
        assert "--" in err.message, err.message
        return
    rendered = plans(config)
    well_formed(rendered)
    implied(spec.field, value, rendered)


@pytest.mark.parametrize("flag, value, message", [
    ("--exclude-outbound-ips", "fe80::1%1\n-A OUTPUT -p tcp -j REDIRECT --to-ports 9", "zone id"),
    ("--exclude-outbound-ips", "fe80::1%1\nCOMMIT\n*filter\n-I INPUT 1 -j DROP", "zone id"),
    ("--exclude-inbound-ips", "fe80::1%eth0", "zone id"),
    ("--vnet", 'd0:fd00::1%";drop#/64', "zone id"),
    ("--vnet", "eth0\n:10.0.0.0/8", "not an interface name"),
    ("--vnet", 'a"b:10.0.0.0/8', "not an interface name"),
    ("--vnet", "x" * 15 + "+:198.18.0.0/15", "not an interface name"),  # IFNAMSIZ counts the + too
    ("--ebpf-tc-attach-iface", "eth0\n", "not an interface name"),
    ("--ebpf-tc-attach-iface", "..", "not an interface name"),
    ("--ebpf-tc-attach-iface", "a" * 16, "not an interface name"),
    ("--ebpf-instance-ip", "fe80::1%eth0", "zone id"),
    ("--kuma-dp-user", 'kuma"dp', "not a uid or a user name"),
    ("--redirect-inbound-port", "١٥٠٠٦", "not a port number"),
    ("--exclude-outbound-ports-for-uids", "tcp:53:1\n000", "not a uid"),
    ("--resolv-conf", "/etc/resolv.conf\n", "not a usable path"),
    ("--ebpf-bpffs-path", "run/kuma/bpf", "not an absolute path"),
    ("--iptables-executables", "iptables:/usr/sbin/iptables\n-save", "not a usable path"),
    ("--iptables-executables", "sh:/bin/sh", "is not one of"),
    ("--sleep-between-retries", "2h", "upper bound"),
    ("--max-retries", "101", "out of range"),
    ("--wait", "3601", "out of range"),
])
def test_the_issue_cases_exit_2_naming_the_flag_and_nothing_is_made(tmp_path, flag, value, message):
    state_dir = tmp_path / "state"
    extra = ["--ebpf-enabled"] if flag.startswith("--ebpf-") else []
    result = CliRunner().invoke(main, ["install", "--dry-run", *extra, flag, value],
                                env={"TPCTL_STATE_DIR": str(state_dir)})
    assert result.exit_code == 2, result.output
    assert flag in result.output and message in result.output, result.output
    assert "Traceback" not in result.output and not state_dir.exists()


def test_the_same_value_from_a_variable_and_a_config_file_is_refused_naming_each(tmp_path):
    result = CliRunner().invoke(main, ["install", "--dry-run"], env={"TPCTL_EXCLUDE_OUTBOUND_IPS": "fe80::1%1"})
    assert result.exit_code == 2 and "zone id" in result.output
    path = tmp_path / "c.yaml"
    path.write_text('redirect:\n  vnet:\n    networks: ["d0:fd00::1%\\";drop#/64"]\n')
    with pytest.raises(ConfigError, match="redirect.vnet.networks.*zone id") as err:
        config_module.build({"kuma_dp_user": v.ProxyUser(5678, None)}, [str(path)])
    assert str(path) in err.value.message


def test_lists_are_capped_with_the_cap_named_and_the_scale_sizes_fit():
    ports = ",".join(str(p) for p in range(1, v.LIST_CAP + 2))
    with pytest.raises(ConfigError, match=f"--exclude-outbound-ports: .*cap of {v.LIST_CAP}"):
        config_module.parse_value("exclude_outbound_ports", ports, "--exclude-outbound-ports")
    cidrs = [f"198.19.{i // 64}.{(i % 64) * 4}/30" for i in range(10000)]
    assert len(v.network_list(cidrs)) == 10000 and len(v.port_list(list(range(20000, 30000)))) == 10000
    assert len(v.ports_for_uids_list([f"tcp:{1 + i}:{1000 + i}" for i in range(10000)])) == 10000
    with pytest.raises(ValueError, match="overlap too much"):
        v.ports_for_uids_list([f"{i + 1}:{i}-{i + 5000}" for i in range(10000)])


def test_a_repeated_flag_is_capped_once_its_values_are_joined():
    first, second = (",".join(str(p) for p in range(start, start + 10000)) for start in (20000, 30000))
    result = CliRunner().invoke(main, ["install", "--dry-run", "--exclude-outbound-ports", first,
                                       "--exclude-outbound-ports", second])
    assert result.exit_code == 2 and "--exclude-outbound-ports" in result.output and str(v.LIST_CAP) in result.output


@pytest.mark.parametrize("text", ["eth0", "br-1a2b", "veth.100", "a@b", "x" * 15, "_"])
def test_kernel_style_interface_names_are_accepted_as_given(text):
    assert v.interface_name(text) == text
    (vn,) = v.vnet_list(f"{text}:198.18.0.0/15")
    assert vn.interface == text and vn.cidr == "198.18.0.0/15"
