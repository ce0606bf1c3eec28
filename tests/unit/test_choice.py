"""The engine/backend/family choice matrix, from HostFacts records (pure)."""
from __future__ import annotations

import pytest

from engine import config as config_module
from engine import values as v
from engine.choice import Check, choose
from engine.errors import UnsupportedHost
from engine.probe import Backend, HostFacts


def facts(release="6.1.0", cgroup2="/sys/fs/cgroup/unified", legacy_rules=0, nft_rules=0, default="nf_tables",
          ipv6=("2001:2::1",)):
    return HostFacts(release, cgroup2, (), (Backend("legacy", True, legacy_rules), Backend("nft", True, nft_rules)),
                     default, {}, ipv6)


def config(**explicit):
    return config_module.build({"kuma_dp_user": v.ProxyUser(5678, None), **explicit})


def test_default_is_iptables_with_the_backend_iptables_uses():
    choice = choose(config(), facts())
    assert (choice.engine, choice.backend, choice.families) == ("iptables", "nft", (4, 6))


@pytest.mark.parametrize("legacy, nft, default, expected", [
    (3, 0, "nf_tables", "legacy"),  # the backend that already holds rules wins
    (0, 3, "legacy", "nft"),
    (0, 0, "legacy", "legacy"),
    (2, 2, "nf_tables", "nft"),  # both hold rules: what plain iptables uses
])
def test_auto_backend_as_kumactl(legacy, nft, default, expected):
    assert choose(config(), facts(legacy_rules=legacy, nft_rules=nft, default=default)).backend == expected


def test_backend_flag_overrides():
    assert choose(config(iptables_backend="legacy"), facts(nft_rules=9)).backend == "legacy"


def test_ipv6_only_when_the_host_has_it_and_mode_allows():
    assert choose(config(), facts(ipv6=())).families == (4,)
    assert choose(config(ip_family_mode="ipv4"), facts()).families == (4,)


def test_ebpf_when_every_check_passes():
    checks = [Check("kernel", True, "6.1"), Check("probe", True, "loaded")]
    choice = choose(config(ebpf_enabled=True), facts(), {"ebpf": checks})
    assert choice.engine == "ebpf" and choice.backend is None


def test_ebpf_falls_back_to_iptables_naming_each_failed_check():
    checks = [Check("kernel", False, "release 4.15", "upgrade the kernel"), Check("cgroup2", True, "ok")]
    choice = choose(config(ebpf_enabled=True), facts(), {"ebpf": checks})
    assert choice.engine == "iptables"
    assert "kernel: release 4.15" in choice.reasons[0] and "upgrade the kernel" in choice.reasons[0]


def test_no_fallback_turns_a_failed_check_into_exit_3():
    checks = [Check("kernel", False, "release 2.6.32", "upgrade")]
    with pytest.raises(UnsupportedHost) as err:
        choose(config(ebpf_enabled=True, no_fallback=True), facts(), {"ebpf": checks})
    assert err.value.exit_code == 3 and "2.6.32" in str(err.value)


def test_old_kernel_and_missing_cgroup2_fail_the_base_checks():
    choice = choose(config(ebpf_enabled=True), facts(release="2.6.32", cgroup2=None))
    assert choice.engine == "iptables"
    assert "kernel" in choice.reasons[0] and "cgroup2" in choice.reasons[0]


def test_an_optional_check_that_fails_does_not_cause_fallback():
    checks = [Check("kernel", True, "6.1"), Check("prog:getpeername", False, "EINVAL", "kernel >= 5.8", required=False)]
    assert choose(config(ebpf_enabled=True), facts(), {"ebpf": checks}).engine == "ebpf"
