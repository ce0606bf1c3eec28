"""Parsing and validation of every kind of flag value, and the precedence of the sources."""
from __future__ import annotations

import re

import pytest

from engine import config as config_module
from engine import values as v
from engine.errors import ConfigError


def build(**explicit):
    return config_module.build({"kuma_dp_user": v.ProxyUser(5678, "kuma-dp"), **explicit})


@pytest.mark.parametrize("text, expected", [("1", 1), ("65535", 65535), (" 15001 ", 15001)])
def test_port_accepts_1_to_65535(text, expected):
    assert v.port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "-1", "http", ""])
def test_port_rejects_the_rest(text):
    with pytest.raises(ValueError):
        v.port(text)


def test_port_lists_join_repeated_flags_and_drop_duplicates():
    assert v.port_list(["1,22", "22", " 333 "]) == (1, 22, 333)


def test_networks_keep_family_and_drop_host_bits_like_iptables():
    nets = v.network_list(["192.168.0.1,172.32.16.8/16", "fe80::/10"])
    assert [str(n) for n in nets] == ["192.168.0.1/32", "172.32.0.0/16", "fe80::/10"]
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        v.network("10.0.0.300")


@pytest.mark.parametrize("text, protocols, ports, uids", [
    ("53,3000-5000:106-108", ("tcp", "udp"), "53,3000:5000", "106-108"),
    ("1", ("tcp", "udp"), "1:65535", "1"),
    ("udp:53:1000", ("udp",), "53", "1000"),
    ("*:*:0", ("tcp", "udp"), "1:65535", "0"),
    ("tcp,udp:80:5", ("tcp", "udp"), "80", "5"),
])
def test_ports_for_uids_formats(text, protocols, ports, uids):
    (entry,) = v.ports_for_uids_list([text])
    assert (entry.protocols, entry.ports, entry.uids) == (protocols, ports, uids)


@pytest.mark.parametrize("text, message", [
    ("http:80:1", "protocol"), ("80:*", "wildcard"), ("80:1,2", "not a list"), ("a:b:c:d", "protocol"),
    ("70000:1", "port range"), ("5-3:1", "invalid"),
])
def test_ports_for_uids_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        v.ports_for_uids_list([text])


def test_vnet_splits_at_the_first_colon_so_ipv6_cidrs_work():
    (vn,) = v.vnet_list(["iface:::1/64"])
    assert (vn.interface, vn.cidr, str(vn.network)) == ("iface", "::1/64", "::/64")
    with pytest.raises(ValueError, match="iface:cidr"):
        v.vnet_list(["docker0"])


def test_proxy_user_by_name_and_by_uid():
    assert v.proxy_user("root") == v.ProxyUser(0, "root")
    assert v.proxy_user("0").name == "root"
    assert v.proxy_user("4242424") == v.ProxyUser(4242424, None)
    with pytest.raises(ValueError, match="no user named"):
        v.proxy_user("no-such-user-anywhere")


def test_durations_as_kumactl_takes_them():
    assert v.duration_seconds("2s") == 2 and v.duration_seconds("500ms") == 0.5 and v.duration_seconds("1m") == 60


def test_defaults_mirror_kumactl():
    config = build()
    assert (config.redirect_inbound_port, config.redirect_outbound_port, config.redirect_dns_port) == (15006, 15001, 15053)
    assert config.ip_family_mode == "dualstack" and config.redirect_inbound and not config.dns_enabled
    assert (config.wait, config.wait_interval, config.max_retries, config.sleep_between_retries) == (5, 0, 4, 2.0)
    assert config.ebpf_bpffs_path == "/run/kuma/bpf"


def test_dns_flags_conflict_but_a_config_file_may_say_enabled_and_capture_all(tmp_path):
    with pytest.raises(ConfigError, match="--redirect-dns and --redirect-all-dns-traffic"):
        build(redirect_dns=True, redirect_all_dns_traffic=True)
    path = tmp_path / "c.yaml"
    path.write_text("redirect:\n  dns:\n    enabled: true\n    captureAll: true\n")
    config = config_module.build({"kuma_dp_user": v.ProxyUser(1, None)}, [str(path)])
    assert config.dns_enabled and config.capture_all_dns


def test_precedence_defaults_then_files_in_order_then_explicit(tmp_path):
    first, second = tmp_path / "1.yaml", tmp_path / "2.yaml"
    first.write_text("redirect:\n  inbound:\n    port: 1111\n    excludePorts: [1, 2]\n")
    second.write_text("redirect:\n  inbound:\n    excludePorts: [3]\n")
    config = config_module.build({"kuma_dp_user": v.ProxyUser(1, None)}, [str(first), str(second)])
    assert config.redirect_inbound_port == 1111 and config.exclude_inbound_ports == (3,)  # lists replace
    config = config_module.build({"kuma_dp_user": v.ProxyUser(1, None), "redirect_inbound_port": 2222},
                                 [str(first)])
    assert config.redirect_inbound_port == 2222


@pytest.mark.parametrize("yaml_text, message", [
    ("redirect:\n  inbound:\n    port: 0\n", "redirect.inbound.port"),
    ("redirect:\n  nope: 1\n", "unknown key 'redirect.nope'"),
    ("- a\n", "mapping"),
    ("a: [", "not valid YAML"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as err:
        config_module.build({}, [str(path)])
    assert str(path) in str(err.value)


@pytest.mark.parametrize("explicit, message", [
    ({"redirect_inbound_port": 15001}, "--redirect-outbound-port are both 15001"),
    ({"exclude_outbound_ports": (15006,)}, "is a redirect port"),
    ({"ebpf_instance_ip": "198.18.0.1"}, "--ebpf-instance-ip needs --ebpf-enabled"),
    ({"no_fallback": True}, "--no-fallback needs --ebpf-enabled"),
])
def test_cross_flag_checks(explicit, message):
    with pytest.raises(ConfigError, match=message):
        build(**explicit)


@pytest.mark.parametrize("parse, text", [
    (v.network, "fe80::1%eth0"), (v.network, "fe80::1%1\n-A OUTPUT"), (v.ip_address, "fe80::1%1"),
    (v.network, "１０.0.0.1"), (v.port, "1_000"), (v.port, "+80"), (v.port, "٨٠"), (v.unsigned, "0x10"),
    (v.interface_name, "eth0\n"), (v.interface_name, "."), (v.interface_name, "a/b"), (v.interface_name, "a:b"),
    (v.interface_name, "e th0"), (v.interface_name, "eth0+"), (v.proxy_user, "kuma dp"), (v.proxy_user, "-x"),
    (v.duration_seconds, "1e3"), (v.duration_seconds, "٢s"), (v.absolute_path, "relative"),
    (v.path, "/a\x00b"), (v.path, "/tmp/é"), (v.cgroup_path, "auto\n/x"),
])
def test_strict_grammars_refuse_what_the_lenient_parsers_took(parse, text):
    with pytest.raises(ValueError):
        parse(text)


def test_typed_values_render_canonically_and_keep_what_comments_show():
    (vn,) = v.vnet_list("br+:172.18.0.1/16")
    assert (vn.interface, vn.cidr, str(vn.network)) == ("br+", "172.18.0.1/16", "172.18.0.0/16")
    assert v.interface_name("eth0+", wildcard=True) == "eth0+"
    assert v.executables("iptables: /usr/sbin/iptables-nft ,ip6tables:/x") == "iptables:/usr/sbin/iptables-nft,ip6tables:/x"
    assert v.executables({"iptables": "/usr/sbin/iptables-nft"}) == "iptables:/usr/sbin/iptables-nft"
    assert v.cgroup_path("auto") == "auto" and v.cgroup_path("/sys/fs/cgroup/a.slice") == "/sys/fs/cgroup/a.slice"
    assert v.port(15001) == 15001 and v.unsigned(" 7 ") == 7 and v.duration_seconds("60s", upper=60) == 60


def test_bounds_of_the_retry_and_lock_flags_are_in_their_help():
    from engine.options import BY_FIELD

    for field, too_big in (("wait", "3601"), ("wait_interval", "10000001"), ("max_retries", "101"),
                           ("sleep_between_retries", "61s")):
        with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
            config_module.parse_value(field, too_big, f"--{field.replace('_', '-')}")
        assert re.search(r"\d", BY_FIELD[field].help.split("(")[-1]), BY_FIELD[field].help


def test_a_host_user_name_outside_the_grammar_is_not_carried_into_comments(monkeypatch):
    import pwd

    odd = pwd.struct_passwd(("evil\"name", "x", 4242, 4242, "", "/", "/bin/false"))
    monkeypatch.setattr(v.pwd, "getpwuid", lambda uid: odd)
    assert v.proxy_user("4242") == v.ProxyUser(4242, None)


def test_a_directory_user_name_resolves_to_its_uid_and_is_never_rendered(monkeypatch):
    import pwd

    entry = pwd.struct_passwd(("kuma-dp@corp.example", "x", 4242, 4242, "", "/", "/bin/false"))
    real = pwd.getpwnam
    monkeypatch.setattr(v.pwd, "getpwnam", lambda name: entry if name == entry.pw_name else real(name))
    assert v.proxy_user("kuma-dp@corp.example") == v.ProxyUser(4242, None)
    for hostile in ('kuma"dp', "kuma dp", "kuma\ndp", "x" * 257):
        with pytest.raises(ValueError, match="not a uid or a user name"):
            v.proxy_user(hostile)


def test_a_yaml_number_too_long_to_convert_quickly_is_bad_input():
    """Python before 3.11 converts decimal digits in quadratic time (4 MiB of them: minutes)."""
    with pytest.raises(ConfigError, match="a number of 100 characters"):
        config_module.load_yaml("redirect:\n  inbound:\n    port: " + "1" * 100 + "\n", "file.yaml")
    assert config_module.load_yaml('a: "' + "1" * 100 + '"\n', "file.yaml") == {"a": "1" * 100}
    ports = ",".join(str(p) for p in range(1000, 1200))  # a long plain scalar that is a list, not a number
    assert config_module.load_yaml(f"a: {ports}\n", "file.yaml") == {"a": ports}
