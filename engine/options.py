"""Every install flag as data: name, parser, default, config-file key, help.

The CLI builds its click options from this table, config files and environment variables are
read through it, so a flag, its `TPCTL_*` variable and its YAML key can never disagree.
Flag names, defaults and YAML keys mirror `kumactl install transparent-proxy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine import values as v

# Bounds on kumactl's numeric flags: kumactl takes any number; these are the bounds tpctl had
# before retries could sleep (a config that worked keeps working), and a sleep between retries
# now has one too, so that a typo cannot hold the xtables lock's queue for days.
MAX_WAIT_S = 3600  # the xtables lock wait; kumactl's default is 5
MAX_WAIT_INTERVAL_US = 10_000_000
MAX_RETRIES = 100
MAX_SLEEP_S = 60  # each pause ends at SIGINT, SIGTERM or SIGHUP (engine/transaction.py)
LISTS = f"comma list, repeatable, at most {v.LIST_CAP:,} entries in all"


@dataclass(frozen=True)
class OptionSpec:
    flag: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    yaml: str | None = None  # dotted key in a --config file (kumactl's schema)
    multiple: bool = False  # repeatable; the values of every occurrence are joined
    switch: bool = False  # boolean: `--flag` means true, `--flag=false` is accepted too
    hidden: bool = False

    @property
    def field(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def envvar(self) -> str:
        return "TPCTL_" + self.field.upper()


INSTALL_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("kuma-dp-user", v.proxy_user, None,
               "user name (1-32 of A-Z a-z 0-9 _ . -) or uid of the sidecar proxy; its traffic is never "
               "redirected (default: user kuma-dp if it exists, else uid 5678)", yaml="kumaDPUser"),
    OptionSpec("redirect-inbound", v.boolean, True, "redirect inbound TCP to the inbound port",
               yaml="redirect.inbound.enabled", switch=True),
    OptionSpec("redirect-inbound-port", v.port, 15006, "port the proxy accepts inbound traffic on",
               yaml="redirect.inbound.port"),
    OptionSpec("redirect-outbound", v.boolean, True, "redirect outbound TCP to the outbound port",
               yaml="redirect.outbound.enabled", switch=True, hidden=True),
    OptionSpec("redirect-outbound-port", v.port, 15001, "port the proxy accepts outbound traffic on",
               yaml="redirect.outbound.port"),
    OptionSpec("exclude-inbound-ports", v.port_list, (), f"inbound ports not redirected ({LISTS})",
               yaml="redirect.inbound.excludePorts", multiple=True),
    OptionSpec("exclude-outbound-ports", v.port_list, (), f"outbound ports not redirected ({LISTS})",
               yaml="redirect.outbound.excludePorts", multiple=True),
    OptionSpec("include-inbound-ports", v.port_list, (),
               f"redirect only these inbound ports ({LISTS}; kumactl takes it from a config file "
               "only); conflicts with --exclude-inbound-ports", yaml="redirect.inbound.includePorts", multiple=True),
    OptionSpec("include-outbound-ports", v.port_list, (),
               f"redirect only these outbound ports ({LISTS}; kumactl takes it from a config file "
               "only); conflicts with --exclude-outbound-ports", yaml="redirect.outbound.includePorts", multiple=True),
    OptionSpec("exclude-inbound-ips", v.network_list, (),
               f"source IPs/CIDRs whose inbound traffic is not redirected (no zone ids; {LISTS})",
               yaml="redirect.inbound.excludePortsForIPs", multiple=True),
    OptionSpec("exclude-outbound-ips", v.network_list, (),
               f"destination IPs/CIDRs not redirected (no zone ids; {LISTS})",
               yaml="redirect.outbound.excludePortsForIPs", multiple=True),
    OptionSpec("exclude-outbound-ports-for-uids", v.ports_for_uids_list, (),
               "[protocol:][ports:]uids not redirected, e.g. 53,3000-5000:106-108 or udp:53:1000 (repeatable, "
               f"';' between entries, at most {v.LIST_CAP:,} entries in all)",
               yaml="redirect.outbound.excludePortsForUIDs", multiple=True),
    OptionSpec("redirect-dns", v.boolean, False,
               "redirect DNS (UDP 53) to the resolv.conf name servers to the DNS port",
               yaml="redirect.dns.enabled", switch=True),
    OptionSpec("redirect-all-dns-traffic", v.boolean, False, "redirect all DNS (UDP 53) to the DNS port",
               yaml="redirect.dns.captureAll", switch=True),
    OptionSpec("redirect-dns-port", v.port, 15053, "port the proxy's DNS server listens on",
               yaml="redirect.dns.port"),
    OptionSpec("skip-dns-conntrack-zone-split", v.boolean, False,
               "do not split DNS conntrack zones (raw table)", yaml="redirect.dns.skipConntrackZoneSplit",
               switch=True),
    OptionSpec("ip-family-mode", v.choice(("dualstack", "ipv4")), "dualstack",
               "dualstack: IPv4 and, where the host has a non-loopback IPv6 address, IPv6; ipv4: IPv4 only",
               yaml="ipFamilyMode"),
    OptionSpec("vnet", v.vnet_list, (), "iface:cidr of a virtual network whose traffic goes to the "
               f"outbound port (iface: {v.IFNAME_HELP}, a trailing + for every name starting so; {LISTS})",
               yaml="redirect.vnet.networks", multiple=True),
    OptionSpec("dry-run", v.boolean, False, "print the plan and change nothing", yaml="dryRun", switch=True),
    OptionSpec("verbose", v.boolean, False, "print every step", yaml="verbose", switch=True),
    OptionSpec("store-firewalld", v.boolean, False,
               "also write the rules to firewalld's direct rules file so they survive reboots",
               yaml="storeFirewalld", switch=True),
    OptionSpec("wait", lambda x: v.unsigned(x, MAX_WAIT_S), 5,
               f"seconds to wait for the xtables lock (0-{MAX_WAIT_S})", yaml="wait"),
    OptionSpec("wait-interval", lambda x: v.unsigned(x, MAX_WAIT_INTERVAL_US), 0,
               f"microseconds between xtables lock attempts (0-{MAX_WAIT_INTERVAL_US:,})", yaml="waitInterval"),
    OptionSpec("max-retries", lambda x: v.unsigned(x, MAX_RETRIES), 4, f"retries of a failed apply (0-{MAX_RETRIES})",
               yaml="retry.maxRetries"),
    OptionSpec("sleep-between-retries", lambda x: v.duration_seconds(x, MAX_SLEEP_S), 2.0,
               f"pause between retries (e.g. 2s, 500ms; at most {MAX_SLEEP_S}s)", yaml="retry.sleepBetweenRetries"),
    OptionSpec("iptables-logs", v.boolean, False, "add LOG rules before the redirect rules",
               yaml="log.enabled", switch=True),
    OptionSpec("disable-comments", v.boolean, False, "do not tag rules with comments",
               yaml="comments.disabled", switch=True),
    OptionSpec("drop-invalid-packets", v.boolean, False,
               "drop packets conntrack marks INVALID (mangle table)", yaml="dropInvalidPackets", switch=True),
    OptionSpec("redirect-inbound-insert-instead-of-append", v.boolean, False,
               "insert the inbound jump at the top of PREROUTING instead of appending it",
               yaml="redirect.inbound.insertRedirectInsteadOfAppend", switch=True),
    OptionSpec("redirect-outbound-insert-instead-of-append", v.boolean, False,
               "insert the outbound jump at the top of OUTPUT instead of appending it",
               yaml="redirect.outbound.insertRedirectInsteadOfAppend", switch=True),
    OptionSpec("iptables-executables", v.executables, "",
               "custom executables: iptables:/path,iptables-save:/path,iptables-restore:/path,"
               "ip6tables:/path,... (absolute paths without ','; nft backend only); in a config file "
               "kumactl's mapping",
               yaml="iptablesExecutables"),
    OptionSpec("experimental-transparent-proxy-engine", v.boolean, False,
               "accepted for kumactl compatibility", switch=True),
    OptionSpec("ebpf-enabled", v.boolean, False, "use the eBPF engine where every check passes",
               yaml="ebpf.enabled", switch=True),
    OptionSpec("ebpf-instance-ip", v.ip_address, None,
               "the host's mesh address (default: primary address of the tc interface)",
               yaml="ebpf.instanceIP"),
    OptionSpec("ebpf-programs-source-path", v.absolute_path, None,
               "directory of the BPF C sources, an absolute path (default: bundled)", yaml="ebpf.programsSourcePath"),
    OptionSpec("ebpf-bpffs-path", v.absolute_path, "/run/kuma/bpf",
               "bpffs mount, an absolute path; pins go under <path>/tpctl/", yaml="ebpf.bpffsPath"),
    OptionSpec("ebpf-cgroup-path", v.cgroup_path, "auto",
               "cgroup2 directory to attach to, an absolute path (default: the cgroup2 root)", yaml="ebpf.cgroupPath"),
    OptionSpec("ebpf-tc-attach-iface", v.interface_name, None,
               f"interface for the inbound tc programs ({v.IFNAME_HELP}; default: first up non-loopback "
               "with an address)", yaml="ebpf.tcAttachIface"),
    OptionSpec("ebpf-sk-msg-accel", v.boolean, False,
               "pass data between the app and its sidecar with sk_msg instead of the TCP stack "
               "(tpctl only; off by default: the kernel gives it no backpressure, see README)",
               yaml="ebpf.skMsgAcceleration", switch=True),
    OptionSpec("nftables-enabled", v.boolean, False,
               "use the native nftables engine (one table, inet tpctl) where its checks pass, else iptables "
               "(tpctl only; after eBPF when both are asked for)", switch=True),
    OptionSpec("persist", v.boolean, False,
               "also survive reboots: write the configuration to /etc/tpctl/config.yaml (kumactl's schema) and "
               "enable tpctl.service, which installs from it at boot; tpctl uninstall removes both (tpctl only)",
               switch=True),
    OptionSpec("allow-ssh-redirect", v.boolean, False,
               "install even though inbound redirection would take an SSH port (the session's, or one sshd "
               "listens on) to the sidecar; without it install refuses (exit 2) naming the port (tpctl only)",
               switch=True),
    OptionSpec("no-fallback", v.boolean, False, "with --ebpf-enabled or --nftables-enabled: fail (exit 3) "
               "instead of falling back", switch=True),
    OptionSpec("iptables-backend", v.choice(("auto", "legacy", "nft")), "auto",
               "auto: the backend that already holds rules, else the one `iptables` uses"),
    OptionSpec("legacy-applier", v.choice(("auto", "python-iptables", "restore")), "auto",
               "how the legacy backend writes rules: python-iptables, or the same rendered plan through "
               "iptables-legacy-restore --noflush (auto: python-iptables when its self-test passes here)"),
    OptionSpec("resolv-conf", v.absolute_path, "/etc/resolv.conf",
               "file listing the name servers for --redirect-dns, an absolute path (a regular file of at most "
               "64 KiB, read only when --redirect-dns needs it)",
               yaml="redirect.dns.resolvConfigPath"),
)

BY_FIELD = {spec.field: spec for spec in INSTALL_OPTIONS}
BY_YAML = {spec.yaml: spec for spec in INSTALL_OPTIONS if spec.yaml}
