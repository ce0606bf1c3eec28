"""--store-firewalld: keep the rules in firewalld's direct rules file, as kumactl documents.

firewalld re-applies /etc/firewalld/direct.xml when it starts, so the redirect survives a
reboot. Unlike kumactl, each entry carries its real family (ipv4/ipv6) and a priority that
keeps the order of the rules inside its chain. Entries are recognised as ours by the same tags
as live rules (TPCTL_ chains, "tpctl/" comments), so uninstall removes only them.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from engine.iptables.live import is_tagged
from engine.iptables.rules import FamilyPlan

DEFAULT_PATH = "/etc/firewalld/direct.xml"
PATH_ENV = "TPCTL_FIREWALLD_DIRECT_XML"


def direct_path() -> str:
    return os.environ.get(PATH_ENV, DEFAULT_PATH)


def _read(path: str) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        return ET.Element("direct")


def _ours(element: ET.Element) -> bool:
    return is_tagged(element.get("chain", ""), element.text or "")


def merged(root: ET.Element, families: tuple[FamilyPlan, ...]) -> ET.Element:
    """root without our old entries, plus the plan's chains and rules."""
    for element in [e for e in root if _ours(e)]:
        root.remove(element)
    for fam in families:
        ipv = f"ipv{fam.family}"
        for table in fam.tables:
            for chain in table.chains:
                ET.SubElement(root, "chain", ipv=ipv, table=table.name, chain=chain)
        for table in fam.tables:
            order: dict[str, int] = {}
            for line in table.save_view().splitlines():
                if line.startswith("-A "):
                    _, chain, spec = line.split(" ", 2)
                    rule = ET.SubElement(root, "rule", ipv=ipv, table=table.name, chain=chain,
                                         priority=str(order.get(chain, 0)))
                    rule.text = spec
                    order[chain] = order.get(chain, 0) + 1
    return root


def render(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(families: tuple[FamilyPlan, ...]) -> tuple[str, bytes | None]:
    """Store the plan; return (path, previous bytes or None) so the caller can undo."""
    path = direct_path()
    previous = open(path, "rb").read() if os.path.exists(path) else None
    text = render(merged(_read(path), families))
    _atomic_write(path, text.encode())
    return path, previous


def restore(path: str, previous: bytes | None) -> None:
    if previous is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        _atomic_write(path, previous)


def remove_ours() -> str | None:
    """Drop our entries from the file; return its path if anything was removed."""
    path = direct_path()
    if not os.path.exists(path):
        return None
    root = _read(path)
    ours = [e for e in root if _ours(e)]
    if not ours:
        return None
    for element in ours:
        root.remove(element)
    _atomic_write(path, render(root).encode())
    return path


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tpctl-tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
