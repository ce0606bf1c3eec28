"""Config: the user's stated intent, pure, frozen and validated.

Sources, lowest precedence first: defaults < --config files (in the order given; a later file
replaces a list, it does not merge) < TPCTL_* environment variables < flags. Bad input raises
ConfigError naming the flag (or file and key) and what would be valid.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import yaml

from engine import values as v
from engine.errors import ConfigError
from engine.options import BY_FIELD, BY_YAML, INSTALL_OPTIONS


@dataclass(frozen=True)
class Config:
    kuma_dp_user: v.ProxyUser
    redirect_inbound: bool
    redirect_inbound_port: int
    redirect_outbound: bool
    redirect_outbound_port: int
    exclude_inbound_ports: tuple
    exclude_outbound_ports: tuple
    include_inbound_ports: tuple
    include_outbound_ports: tuple
    exclude_inbound_ips: tuple
    exclude_outbound_ips: tuple
    exclude_outbound_ports_for_uids: tuple
    redirect_dns: bool
    redirect_all_dns_traffic: bool
    redirect_dns_port: int
    skip_dns_conntrack_zone_split: bool
    ip_family_mode: str
    vnet: tuple
    dry_run: bool
    verbose: bool
    store_firewalld: bool
    wait: int
    wait_interval: int
    max_retries: int
    sleep_between_retries: float
    iptables_logs: bool
    disable_comments: bool
    drop_invalid_packets: bool
    redirect_inbound_insert_instead_of_append: bool
    redirect_outbound_insert_instead_of_append: bool
    iptables_executables: str
    experimental_transparent_proxy_engine: bool
    ebpf_enabled: bool
    ebpf_instance_ip: str | None
    ebpf_programs_source_path: str | None
    ebpf_bpffs_path: str
    ebpf_cgroup_path: str
    ebpf_tc_attach_iface: str | None
    ebpf_sk_msg_accel: bool
    nftables_enabled: bool
    persist: bool
    allow_ssh_redirect: bool
    no_fallback: bool
    iptables_backend: str
    legacy_applier: str
    resolv_conf: str

    @property
    def proxy_uid(self) -> int:
        return self.kuma_dp_user.uid

    @property
    def dns_enabled(self) -> bool:
        return self.redirect_dns or self.redirect_all_dns_traffic

    @property
    def capture_all_dns(self) -> bool:
        return self.redirect_all_dns_traffic

    @property
    def dns_servers_file(self) -> str | None:
        """The resolv.conf to read, when DNS redirection needs its name servers (only then)."""
        return self.resolv_conf if self.redirect_dns and not self.capture_all_dns else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view, for state and status."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, v.ProxyUser):
                value = {"uid": value.uid, "name": value.name}
            elif isinstance(value, tuple):
                value = [x.to_json() if hasattr(x, "to_json") else x.__dict__ if hasattr(x, "__dataclass_fields__")
                         else str(x) for x in value]
                value = [{k: str(val) for k, val in x.items()} if isinstance(x, dict) else x for x in value]
            out[f.name] = value
        return out


def defaults() -> dict[str, Any]:
    values = {spec.field: spec.default for spec in INSTALL_OPTIONS}
    values["kuma_dp_user"] = None
    return values


def parse_value(field: str, raw: Any, where: str) -> Any:
    """Parse one raw value of `field`; `where` names its source in the error."""
    spec = BY_FIELD[field]
    try:
        return spec.parse(raw)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def read_config_file(path: str) -> dict[str, Any]:
    """Read one --config file (YAML in kumactl's schema; '-' is stdin) into {field: value}."""
    what = f"--config {path}"
    fix = "fix: give a YAML file in kumactl's schema, or - for stdin"
    text = read_stdin(what, CONFIG_LIMIT, fix) if path == "-" else read_limited(path, what, CONFIG_LIMIT, fix)
    document = load_yaml(text, what) or {}
    if not isinstance(document, dict):
        raise ConfigError(f"--config {path}: expected a mapping at the top level")
    result = {}
    for key, raw in _flatten(document):
        spec = BY_YAML.get(key)
        if spec is None:
            raise ConfigError(f"--config {path}: unknown key {key!r} "
                              f"(known: {', '.join(sorted(BY_YAML))})")
        result[spec.field] = parse_value(spec.field, raw, f"--config {path}: {key}")
    return result


# -- bounded readers: every file read from a user's path is bounded in size, kind, aliases, depth --
CONFIG_LIMIT = 4 * 1024 * 1024  # --config: 10,000 exclusions take about 250 KB of YAML
RESOLV_CONF_LIMIT = 64 * 1024  # --resolv-conf: the resolver itself reads a few name servers
YAML_DEPTH_LIMIT = 32  # kumactl's schema nests 4 deep
# libyaml's parser where PyYAML has it: 10,000 exclusions load in 0.06 s instead of 0.37 s
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}


class _NotRegular(Exception):
    """The path names something that is not a regular file (its kind is the message)."""


def read_limited(path: str, what: str, limit: int, fix: str) -> str:
    """The UTF-8 text of the regular file `path`, at most `limit` bytes. Anything else is a
    ConfigError naming `what` (the flag and its value) and `fix`, at once: a FIFO would block,
    a device may never end (or act on being opened), a directory has no text. Symbolic links
    are followed: reading changes nothing, and /etc/resolv.conf is often one."""
    try:
        fd = _open_regular(path)
    except _NotRegular as kind:
        raise ConfigError(f"{what}: {kind}, not a regular file ({fix})") from None
    except OSError as err:
        raise ConfigError(f"{what}: cannot read it ({err.strerror}) ({fix})") from None
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as err:
            raise ConfigError(f"{what}: cannot read it ({err.strerror}) ({fix})") from None
    return _decoded(data, what, limit, fix)


def read_stdin(what: str, limit: int, fix: str) -> str:
    """Standard input as UTF-8 text of at most `limit` bytes (it ends when the writer closes it)."""
    if sys.stdin is None:
        raise ConfigError(f"{what}: there is no standard input ({fix})")
    try:
        data = sys.stdin.buffer.read(limit + 1)
    except OSError as err:
        raise ConfigError(f"{what}: cannot read standard input ({err.strerror}) ({fix})") from None
    return _decoded(data, what, limit, fix)


def _open_regular(path: str) -> int:
    """A read-only fd of `path` after proving it is a regular file. O_PATH opens nothing for
    reading (no FIFO wait, no device driver's open); the same inode is then opened for reading
    through /proc, so a rename in between cannot swap in something else."""
    where = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        found = os.fstat(where)
        if not stat.S_ISREG(found.st_mode):
            raise _NotRegular(_KINDS.get(stat.S_IFMT(found.st_mode), "not a file"))
        try:
            return os.open(f"/proc/self/fd/{where}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:  # no /proc (a bare chroot): by name, then prove it is the same file
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (found.st_dev, found.st_ino):
                os.close(fd)
                raise OSError(errno.ESTALE, "it was replaced while being opened") from None
            return fd
    finally:
        os.close(where)


def _decoded(data: bytes, what: str, limit: int, fix: str) -> str:
    if len(data) > limit:
        raise ConfigError(f"{what}: larger than {limit} bytes, the most tpctl reads ({fix})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what}: not UTF-8 text (byte {err.start}) ({fix})") from None


def load_yaml(text: str, what: str) -> Any:
    """YAML without aliases and nested at most YAML_DEPTH_LIMIT deep: an alias is how a few
    hundred bytes expand into billions of values, depth is how the loader's recursion fails.
    libyaml's event stream is scanned first (no recursion, nothing built), then loaded."""
    try:
        _check_shape(text, what)
        return yaml.load(text, Loader=LOADER)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not valid YAML ({err})") from None
    except ValueError as err:  # a scalar YAML accepts and Python does not (an int of 5,000 digits)
        raise ConfigError(f"{what}: a value cannot be read ({err})") from None


def _check_shape(text: str, what: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"{what}: YAML aliases (*{event.anchor[:40]}) are not accepted; write the value out "
                              "where it is used")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > YAML_DEPTH_LIMIT:
                raise ConfigError(f"{what}: nested more than {YAML_DEPTH_LIMIT} deep, where kumactl's schema "
                                  "nests 4 (fix: the keys and lists of kumactl's schema)")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and event.implicit[0] and _LONG_NUMBER.fullmatch(event.value):
            # Python before 3.11 converts decimal digits in quadratic time: 4 MiB of them, minutes
            raise ConfigError(f"{what}: a number of {len(event.value)} characters; no value in kumactl's schema "
                              "needs more than 20")


_LONG_NUMBER = re.compile(r"[-+]?[0-9][0-9_:.]{64,}")  # what YAML's resolver may read as an int or a float


def _flatten(document: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in BY_YAML:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def build(explicit: dict[str, Any], config_files: Iterable[str] = ()) -> Config:
    """Merge the sources and validate. `explicit` holds parsed values from env and flags."""
    values = defaults()
    for path in config_files:
        values.update(read_config_file(path))
    values.update(explicit)
    if values["kuma_dp_user"] is None:
        values["kuma_dp_user"] = v.default_proxy_user()
    config = Config(**values)
    validate(config, explicit)
    return config


def validate(config: Config, explicit: dict[str, Any]) -> None:
    """Checks that span several flags."""
    for spec in INSTALL_OPTIONS:  # a repeated flag's values once joined: the caps of one value
        if spec.multiple and spec.field in explicit:
            try:
                v.joined(explicit[spec.field])
            except ValueError as err:
                raise ConfigError(f"--{spec.flag}: {err}") from None
    # As kumactl: the two flags conflict, while a config file may say enabled + captureAll.
    if explicit.get("redirect_dns") and explicit.get("redirect_all_dns_traffic"):
        raise ConfigError("--redirect-dns and --redirect-all-dns-traffic conflict: "
                          "use --redirect-dns for the resolv.conf servers only, or "
                          "--redirect-all-dns-traffic for every DNS server, not both")
    ports = {"--redirect-inbound-port": config.redirect_inbound_port,
             "--redirect-outbound-port": config.redirect_outbound_port}
    if config.dns_enabled:
        ports["--redirect-dns-port"] = config.redirect_dns_port
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ConfigError(f"{seen[port]} and {flag} are both {port}: each proxy listener needs its own port")
        seen[port] = flag
    for direction in ("inbound", "outbound"):
        if getattr(config, f"include_{direction}_ports") and getattr(config, f"exclude_{direction}_ports"):
            raise ConfigError(f"--include-{direction}-ports and --exclude-{direction}-ports conflict "
                              f"(redirect.{direction}.includePorts and excludePorts): with include ports only those "
                              "are redirected, so the exclusions would do nothing (kumactl ignores them silently)")
    for flag, excluded in (("--exclude-outbound-ports", config.exclude_outbound_ports),
                           ("--exclude-inbound-ports", config.exclude_inbound_ports)):
        for port in excluded:
            if port in (config.redirect_inbound_port, config.redirect_outbound_port):
                raise ConfigError(f"{flag} contains {port}, which is a redirect port: "
                                  "excluding it would let traffic bypass or loop around the proxy")
    ebpf_only = [spec.flag for spec in INSTALL_OPTIONS
                 if spec.flag.startswith("ebpf-") and spec.flag != "ebpf-enabled"
                 and getattr(config, spec.field) != spec.default]
    if ebpf_only and not config.ebpf_enabled:
        raise ConfigError(f"--{ebpf_only[0]} needs --ebpf-enabled (it only affects the eBPF engine)")
    if config.no_fallback and not (config.ebpf_enabled or config.nftables_enabled):
        raise ConfigError("--no-fallback needs --ebpf-enabled or --nftables-enabled (it decides what happens when "
                          "the engine asked for cannot be used)")
