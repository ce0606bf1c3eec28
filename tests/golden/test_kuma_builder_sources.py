"""The rules Kuma has no golden file for (DOCKER_OUTPUT, includePorts), checked against Kuma's own
builder: the comment texts and targets are read from the vendored builder_table_nat.go and
consts.go (tests/golden/kuma_src), formatted as Kuma does, then renamed as every golden here
(KUMA_MESH_ -> TPCTL_, kuma/mesh/transparent/proxy/ -> tpctl/)."""
from __future__ import annotations

import os
import re

from engine import config as config_module
from engine import values as v
from engine.iptables.builder import FamilyInputs, build_family

SRC = os.path.join(os.path.dirname(__file__), "kuma_src")


def _read(name: str) -> str:
    with open(os.path.join(SRC, name), encoding="utf-8") as handle:
        return handle.read()


BUILDER = _read("builder_table_nat.go")
DOCKER_CHAIN = re.search(r'ChainDockerOutput\s*=\s*"(\w+)"', _read("consts.go")).group(1)


def kuma_comment(anchor: str, *args) -> str:
    """The WithCommentf/Sprintf format string of Kuma's rule near `anchor`, formatted."""
    at = BUILDER.index(anchor)
    fmt = re.search(r'(?:WithCommentf|Sprintf)\(\s*"([^"]+)"', BUILDER[at:]).group(1)
    return "tpctl/" + (fmt.replace("%d", "{}").replace("%s", "{}").format(*args))


def render(docker: bool, **explicit) -> list[str]:
    cfg = config_module.build({"kuma_dp_user": v.ProxyUser(5678, None), **explicit})
    return build_family(cfg, FamilyInputs(4, ("127.0.0.11",), docker_output=docker)).restore_text().splitlines()


def test_include_ports_render_as_kumas_builder_writes_them():
    out = render(False, include_inbound_ports=(8080, 8443), include_outbound_ports=(9000,))
    for port in (8080, 8443):
        comment = kuma_comment("for _, port := range cfg.IncludePorts", port)
        assert (f'-A TPCTL_INBOUND -p tcp -m comment --comment "{comment}" -m tcp --dport {port} '
                "-j TPCTL_INBOUND_REDIRECT") in out
    comment = kuma_comment("for _, port := range cfg.Redirect.Outbound.IncludePorts", 9000)
    assert (f'-A TPCTL_OUTBOUND -p tcp -m comment --comment "{comment}" -m tcp --dport 9000 '
            "-j TPCTL_OUTBOUND_REDIRECT") in out
    # as Kuma: with include ports, no catch-all redirect in either chain
    catch_all_in = "redirect all inbound traffic to the custom chain for processing"
    assert catch_all_in in BUILDER and not any(catch_all_in in line for line in out)
    catch_all_out = "redirect all other outbound traffic to our custom chain for further processing"
    assert catch_all_out in BUILDER and not any(catch_all_out in line for line in out)
    assert out.index(next(line for line in out if "--dport 9000" in line)) > out.index(
        next(line for line in out if "return traffic destined for localhost" in line))  # after the returns


def test_kuma_dps_dns_jumps_to_docker_output_when_that_chain_exists():
    comment = "tpctl/" + re.search(r'fmt\.Sprintf\(\s*"(redirect DNS traffic from kuma-dp to the %s chain)"',
                                   BUILDER).group(1).replace("%s", DOCKER_CHAIN)
    with_docker = render(True, redirect_dns=True)
    rule = next(line for line in with_docker if "--uid-owner 5678" in line and "udp --dport 53" in line and "-j CT" not in line)
    assert rule.endswith(f"-j {DOCKER_CHAIN}") and f'--comment "{comment}"' in rule and rule.startswith("-I OUTPUT 1 ")
    redirect = next(line for line in with_docker if "REDIRECT --to-ports 15053" in line)
    assert redirect.startswith("-I OUTPUT 2 ")  # Kuma's order: the DNS jump, then the redirects
    without = render(False, redirect_dns=True)
    plain = next(line for line in without if "--uid-owner 5678" in line and "udp --dport 53" in line and "-j CT" not in line)
    assert plain.endswith("-j RETURN") and "return early for DNS traffic from kuma-dp" in plain
    assert "return early for DNS traffic from kuma-dp" in BUILDER
