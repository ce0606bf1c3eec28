"""The Dataplane resource's `networking.transparentProxying` block that matches an install, for
kuma-dp's Dataplane (Kuma Universal): field names and enum values of Kuma's
api/mesh/v1alpha1/dataplane.proto as its JSON/YAML rendering spells them (tests/golden/kuma_src).
Pure: from the state record."""
from __future__ import annotations

import yaml

IP_FAMILY_MODE = {(4,): "IPv4", (4, 6): "DualStack"}  # TransparentProxying.IpFamilyMode names


def block(record: dict) -> dict:
    """{"networking": {"transparentProxying": {...}}} for the installed configuration. ipFamilyMode
    says what the install redirects: IPv4 where it skipped IPv6 (ipv4 mode, or no IPv6 here)."""
    config = record.get("config") or {}
    families = tuple(sorted((record.get("choice") or {}).get("families") or (4,)))
    return {"networking": {"transparentProxying": {
        "redirectPortInbound": int(config.get("redirect_inbound_port", 15006)),
        "redirectPortOutbound": int(config.get("redirect_outbound_port", 15001)),
        "ipFamilyMode": IP_FAMILY_MODE.get(families, "DualStack"),
    }}}


def text(record: dict) -> str:
    return yaml.safe_dump(block(record), sort_keys=False, default_flow_style=False)
