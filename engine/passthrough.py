"""The proxy's IPv6 inbound passthrough source, ::6/128 on lo (as kumactl adds it).

The proxy forwards inbound connections to the app from 127.0.0.6 / ::6 so that they are not
redirected again. 127.0.0.6 is always there (all of 127/8 is loopback); ::6 must be added.
Both engines need it for IPv6; install records whether it added it, and only then does
uninstall remove it.
"""
from __future__ import annotations

ADDRESS = "::6"
EADDRNOTAVAIL = 99


def present() -> bool:
    """Is ::6/128 on lo already (someone else's, or a replaced install's)? Read without
    pyroute2 (engine.netlink): a reinstall that finds it pays nothing for pyroute2's import."""
    import socket

    from engine import netlink

    lo = next(link["index"] for link in netlink.links() if link["name"] == "lo")
    return (lo, ADDRESS) in netlink.addresses(socket.AF_INET6)


def add() -> bool:
    """Add ::6/128 to lo; return True when this call added it."""
    if present():
        return False
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        ipr.addr("add", index=index, address=ADDRESS, prefixlen=128)
        return True


def remove() -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.addr("del", index=index, address=ADDRESS, prefixlen=128)
        except NetlinkError as err:
            if err.code != EADDRNOTAVAIL:  # already gone is fine
                raise
