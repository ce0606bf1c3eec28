"""The texts bench writes: exclusion sets (checked through tpctl's own config loader), HAProxy
and nginx configs, CPU layout."""
from __future__ import annotations

import ipaddress

import pytest

from bench import configs
from engine import config as config_module
from engine import values as v
from sandbox.netns import APP_V4, SRV_V4


@pytest.mark.parametrize("count", [0, 10, 10000])
def test_excluded_ports_are_distinct_and_never_the_measured_ones(count):
    ports = configs.excluded_ports(count)
    assert len(ports) == len(set(ports)) == count
    assert not set(ports) & configs.TRAFFIC_PORTS
    assert all(1 <= p <= 65535 for p in ports)


def test_excluded_cidrs_never_cover_the_sandbox_hosts_or_loopback():
    cidrs = [ipaddress.ip_network(c) for c in configs.excluded_cidrs(10000)]
    assert len(set(cidrs)) == 10000
    for host in (SRV_V4, APP_V4, "127.0.0.1"):
        assert not any(ipaddress.ip_address(host) in net for net in cidrs)
    assert all(net.subnet_of(ipaddress.ip_network("198.18.0.0/15")) for net in cidrs)


def test_too_many_exclusions_are_refused():
    with pytest.raises(ValueError, match="16384"):
        configs.excluded_cidrs(16385)
    with pytest.raises(ValueError, match="ports"):
        configs.excluded_ports(60000)


def test_exclusion_config_is_read_by_tpctl_as_kumactl_schema(tmp_path):
    path = tmp_path / "exclusions.yaml"
    path.write_text(configs.exclusion_config(1000))
    config = config_module.build({"kuma_dp_user": v.ProxyUser(5678, None)}, [str(path)])
    assert len(config.exclude_outbound_ports) == 1000
    assert len(config.exclude_outbound_ips) == 1000
    assert 80 not in config.exclude_outbound_ports


def test_ten_thousand_cidrs_overflow_one_argv_string():
    # why the scale sweep passes a --config file: MAX_ARG_STRLEN is 32 pages (128 KiB)
    assert len(",".join(configs.excluded_cidrs(10000))) > 128 * 1024


def test_haproxy_config():
    text = configs.haproxy_config("/tmp/x/stats.sock", SRV_V4)
    assert "nbthread 1" in text
    assert "bind 0.0.0.0:15001" in text and "server original 0.0.0.0" in text
    assert "tcp-request connection reject if { dst_port 15001 }" in text  # no loop into itself
    assert f"server nginx {SRV_V4}:80" in text and f"server iperf {SRV_V4}:5201" in text
    assert "stats socket /tmp/x/stats.sock" in text


def test_nginx_config_writes_only_in_its_workdir():
    text = configs.nginx_config("/tmp/w", SRV_V4)
    assert "worker_processes 1;" in text and "master_process off;" in text
    assert f"listen {SRV_V4}:80" in text
    paths = [word.rstrip(";") for word in text.split() if word.startswith("/") and word != "/"]
    assert paths and all(p.startswith("/tmp/w/") for p in paths)


@pytest.mark.parametrize("cpus, layout", [
    ([3], {"client": [3], "sidecar": [3], "server": [3]}),
    ([1, 0], {"client": [0], "sidecar": [1], "server": [1]}),
    ([0, 1, 2, 3], {"client": [0], "sidecar": [1], "server": [2]}),
])
def test_cpu_layout(cpus, layout):
    assert configs.cpu_layout(cpus) == layout


def test_taskset():
    assert configs.taskset([0, 2], ["wrk"]) == ["taskset", "-c", "0,2", "wrk"]


def test_nginx_gets_its_early_error_log_option_only_where_it_has_one():
    """-e came with nginx 1.19.5; Debian 11's 1.18 refuses it and the bench's server never starts."""
    from bench.configs import nginx_argv

    assert nginx_argv("/w", "/w/n.conf", (1, 22, 1)) == ["nginx", "-p", "/w", "-e", "/w/error.log", "-c", "/w/n.conf"]
    assert nginx_argv("/w", "/w/n.conf", (1, 18, 0)) == ["nginx", "-p", "/w", "-c", "/w/n.conf"]
