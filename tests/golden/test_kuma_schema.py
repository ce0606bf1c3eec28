"""tpctl's persisted configuration and Dataplane block against Kuma's own definitions: the Go
structs of kumactl's and kuma-dp's transparent-proxy configuration and the Dataplane proto,
vendored from kumahq/kuma (tests/golden/kuma_src/README.md names the commit), parsed here."""
from __future__ import annotations

import os
import re

import pytest
import yaml

from engine import config as config_module
from engine import dataplane, persist
from engine import values as v
from engine.options import INSTALL_OPTIONS

SRC = os.path.join(os.path.dirname(__file__), "kuma_src")
FIELD = re.compile(r"^\s+(\w+)?\s*([\w.\[\]*]+)\s+`json:\"([^\",]*)", re.M)
TPCTL_ONLY_KEYS = {"ebpf"}  # Kuma removed its eBPF mode (3.0); tpctl keeps the 2.x keys, which kuma-dp ignores


def _read(name: str) -> str:
    with open(os.path.join(SRC, name), encoding="utf-8") as handle:
        return handle.read()


def go_structs(*files: str) -> dict[str, list[tuple[str, str]]]:
    """struct name -> [(json key, Go type)], embedded structs' fields inlined (as encoding/json does)."""
    text = "\n".join(_read(f) for f in files)
    raw = {m.group(1): m.group(2) for m in re.finditer(r"^type (\w+) struct \{\n(.*?)^\}", text, re.M | re.S)}
    out: dict[str, list[tuple[str, str]]] = {}
    for name, body in raw.items():
        fields = [(key, kind) for _n, kind, key in FIELD.findall(body) if key != "-"]
        fields += [(key, kind) for embedded in re.findall(r"^\t(\w+)\s*$", body, re.M) if embedded in raw
                   for _n, kind, key in FIELD.findall(raw[embedded]) if key != "-"]
        out[name] = fields
    return out


def dotted_keys(structs: dict, root: str, prefix: str = "") -> dict[str, str]:
    """Every leaf key path under struct `root`, with its Go type."""
    keys = {}
    for key, kind in structs[root]:
        path = f"{prefix}{key}"
        if kind in structs and kind not in ("Executables",):
            keys.update(dotted_keys(structs, kind, path + "."))
        else:
            keys[path] = kind
    return keys


KUMACTL = dotted_keys(go_structs("config.go", "config_executables.go"), "Config")
KUMA_DP = dotted_keys(go_structs("config_dataplane.go"), "DataplaneConfig")


def test_the_vendored_sources_parse_into_the_keys_kuma_documents():
    assert {"kumaDPUser", "redirect.inbound.port", "redirect.inbound.includePorts", "redirect.dns.captureAll",
            "redirect.vnet.networks", "retry.sleepBetweenRetries", "iptablesExecutables", "ipFamilyMode"} <= set(KUMACTL)
    assert set(KUMA_DP) == {"ipFamilyMode", "redirect.inbound.enabled", "redirect.inbound.port",
                            "redirect.outbound.enabled", "redirect.outbound.port", "redirect.dns.enabled",
                            "redirect.dns.port", "redirect.vnet.networks"}


def test_every_config_file_key_tpctl_reads_is_kumactls():
    ours = {spec.yaml for spec in INSTALL_OPTIONS if spec.yaml and spec.yaml.split(".")[0] not in TPCTL_ONLY_KEYS}
    assert ours - set(KUMACTL) == set()


def _flat(document: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in document.items():
        if isinstance(value, dict) and f"{prefix}{key}" in KUMACTL and KUMACTL[f"{prefix}{key}"] == "Executables":
            out[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def kuma_defaults() -> dict:
    """kuma-dp's defaults, read from Kuma's DefaultConfig and consts (the keys kuma-dp takes)."""
    consts = dict(re.findall(r"(DefaultRedirect\w+Port)\s+uint16 = (\d+)", _read("consts.go")))
    config = _read("config.go")
    assert "IPFamilyMode: IPFamilyModeDualStack" in config and 'IPFamilyModeDualStack IPFamilyMode = "dualstack"' in config
    return {"ipFamilyMode": "dualstack", "redirect.inbound.enabled": True,
            "redirect.inbound.port": int(consts["DefaultRedirectInbountPort"]), "redirect.outbound.enabled": True,
            "redirect.outbound.port": int(consts["DefaultRedirectOutboundPort"]), "redirect.dns.enabled": False,
            "redirect.dns.port": int(consts["DefaultRedirectDNSPort"]), "redirect.vnet.networks": []}


CONFIGS = [
    {},
    {"redirect_inbound_port": 16006, "redirect_outbound_port": 16001, "ip_family_mode": "ipv4"},
    {"redirect_inbound": False, "redirect_dns": True, "redirect_dns_port": 15054,
     "vnet": v.vnet_list("docker0:172.17.0.0/16"), "exclude_outbound_ports": (22,),
     "iptables_executables": "iptables:/usr/sbin/iptables-nft,iptables-save:/usr/sbin/iptables-nft-save",
     "ebpf_enabled": True, "ebpf_sk_msg_accel": True, "sleep_between_retries": 0.5},
]


@pytest.mark.parametrize("explicit", CONFIGS)
def test_the_persisted_file_is_kumactls_schema_and_kuma_dp_reads_the_install_from_it(explicit):
    cfg = config_module.build({"kuma_dp_user": v.ProxyUser(5678, None), **explicit})
    flat = _flat(yaml.safe_load(persist.config_text(cfg)))
    unknown = {k for k in flat if k not in KUMACTL and k.split(".")[0] not in TPCTL_ONLY_KEYS}
    assert unknown == set(), unknown
    for key, value in flat.items():  # Kuma's types: ports 1-65535, the lowercase family mode
        kind = KUMACTL.get(key, "")
        if kind == "Port":
            assert isinstance(value, int) and 1 <= value <= 65535, (key, value)
        elif kind == "IPFamilyMode":
            assert value in ("dualstack", "ipv4"), value  # Kuma compares case-sensitively
        elif kind == "bool":
            assert isinstance(value, bool), (key, value)
        elif kind == "Executables":
            assert set(value) <= {"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                                  "ip6tables-restore"}, value
    seen = {**kuma_defaults(), **{k: flat[k] for k in KUMA_DP if k in flat}}  # what kuma-dp ends up with
    assert seen["redirect.inbound.enabled"] == cfg.redirect_inbound
    assert seen["redirect.inbound.port"] == cfg.redirect_inbound_port
    assert seen["redirect.outbound.port"] == cfg.redirect_outbound_port
    assert seen["ipFamilyMode"] == cfg.ip_family_mode
    assert seen["redirect.dns.enabled"] == cfg.redirect_dns and seen["redirect.dns.port"] == cfg.redirect_dns_port
    assert seen["redirect.vnet.networks"] == [f"{n.interface}:{n.cidr}" for n in cfg.vnet]


def proto_json_names() -> tuple[set[str], set[str]]:
    """TransparentProxying's fields as protobuf's JSON mapping names them (lowerCamelCase), and
    its IpFamilyMode enum values."""
    text = _read("dataplane_transparent_proxying.proto")
    fields = re.findall(r"^\s+(?:repeated\s+)?[\w.]+\s+(\w+)\s*=\s*\d+", text, re.M)
    camel = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), f) for f in fields}
    enum = re.search(r"enum IpFamilyMode \{(.*?)\}", text, re.S)
    assert enum
    return camel, set(re.findall(r"(\w+) = \d+;", enum.group(1)))


@pytest.mark.parametrize("families, mode", [((4, 6), "DualStack"), ((4,), "IPv4")])
def test_the_dataplane_block_uses_the_protos_names_and_values(families, mode):
    fields, modes = proto_json_names()
    assert {"redirectPortInbound", "redirectPortOutbound", "ipFamilyMode"} <= fields
    record = {"config": {"redirect_inbound_port": 15006, "redirect_outbound_port": 15001},
              "choice": {"families": list(families)}}
    block = yaml.safe_load(dataplane.text(record))["networking"]["transparentProxying"]
    assert set(block) <= fields and block["ipFamilyMode"] in modes and block["ipFamilyMode"] == mode
    assert block["redirectPortInbound"] == 15006 and block["redirectPortOutbound"] == 15001
