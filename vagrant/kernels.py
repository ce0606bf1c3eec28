"""The local matrix's kernels: read kernels.yaml, fetch each kernel as Debian packages, unpack.

Packages come through apt with a private configuration under vagrant/.cache/apt/<suite>/ (own
sources list, state and cache): the host's apt configuration is never changed, and apt still
checks every index signature and package hash against Debian's keyring. Each kernel is unpacked
with `dpkg-deb -x` into vagrant/.cache/kernels/<name>/root/, where the guest finds it:
boot/vmlinuz-<release> (or, in newer packaging, usr/lib/modules/<release>/vmlinuz),
{usr/,}lib/modules/<release>/ (with modules.dep, made here by depmod) and
usr/src/linux-headers-<release>{,-common}/ for BCC.

Packaging moved under us: up to trixie linux-image-<release> holds the image and the modules;
from Debian's 7.x packaging (sid) it is an empty package depending on linux-binary-<release>
(usr/lib/modules/<release>/vmlinuz), linux-modules-<release> and linux-base-<release> (config,
System.map, modules.builtin, which modprobe needs in the guest). We fetch the image package's
dependencies that carry the release in their name, so both layouts come whole.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ENGINES = ("ebpf", "iptables")  # what `install --ebpf-enabled` may choose
NFTABLES_ENGINES = ("nftables", "iptables")  # what `install --nftables-enabled` may choose
CONDITIONS = ("uname-2.6", "no-cgroup2")


class MatrixError(Exception):
    """A problem the user fixes (missing tool, failed download, bad data): exit 2, fix named."""


@dataclass(frozen=True)
class KernelSpec:
    name: str
    suite: str
    series: str
    engine: str
    ci: bool
    cpu: str
    # False for a suite whose Release file may be past its Valid-Until (sid, on a mirror
    # snapshot): apt then refuses the index unless told; signatures and hashes are still checked
    check_valid_until: bool = True
    nftables: str = ""  # the engine `install --nftables-enabled` must choose on that kernel


@dataclass(frozen=True)
class FallbackSpec:
    name: str
    on: str
    condition: str
    engine: str
    reason: str  # the name of the check that must fail (engine.choice / ebpf.probe Check.name)


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel, ready to boot."""

    spec: KernelSpec
    release: str  # uname -r of the guest, e.g. 6.1.0-28-amd64
    root: str  # the unpacked packages
    packages: tuple[str, ...]  # name=version, as fetched

    @property
    def image(self) -> str:
        """boot/vmlinuz-<release> (linux-image-*, up to trixie) or <moddir>/vmlinuz (linux-binary-*)."""
        candidates = (os.path.join(self.root, "boot", f"vmlinuz-{self.release}"),
                      os.path.join(self.moddir, "vmlinuz"))
        return next((c for c in candidates if os.path.isfile(c)), candidates[0])

    @property
    def moddir(self) -> str:
        return modules_dir(self.root, self.release)

    @property
    def headers(self) -> tuple[str, str]:
        """(build, source): the arch tree with generated headers, and the -common tree."""
        base = os.path.join(self.root, "usr", "src", f"linux-headers-{self.release}")
        return base, re.sub(r"-amd64$", "-common", base)


@dataclass(frozen=True)
class Matrix:
    kernels: list[KernelSpec]
    fallbacks: list[FallbackSpec]
    tests: list[str]  # pytest arguments run in each guest
    ci_tests: list[str]  # the same for --ci


def load(path: str = os.path.join(HERE, "kernels.yaml")) -> Matrix:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    try:
        kernels = [KernelSpec(k["name"], k["suite"], str(k["series"]), k["engine"], bool(k.get("ci", False)),
                              k.get("cpu", "max"), bool(k.get("check_valid_until", True)),
                              str(k.get("nftables", "")))
                   for k in data["kernels"]]
        fallbacks = [FallbackSpec(f["name"], f["guest"], f["condition"], f["engine"], f["reason"])
                     for f in data.get("fallbacks", [])]
    except (KeyError, TypeError) as err:
        raise MatrixError(f"{path}: every kernel needs name, suite, series, engine ({err!r} missing)") from err
    names = [k.name for k in kernels]
    problems = [f"duplicate kernel {n}" for n in set(names) if names.count(n) > 1]
    problems += [f"{k.name}: engine {k.engine} is not one of {ENGINES}" for k in kernels if k.engine not in ENGINES]
    problems += [f"{k.name}: `nftables: {k.nftables}` (what --nftables-enabled must choose) is not one of "
                 f"{NFTABLES_ENGINES}" for k in kernels if k.nftables not in NFTABLES_ENGINES]
    problems += [f"{f.name}: `guest: {f.on}` names no kernel" for f in fallbacks if f.on not in names]
    problems += [f"{f.name}: condition {f.condition} is not one of {CONDITIONS}"
                 for f in fallbacks if f.condition not in CONDITIONS]
    tests, ci_tests = list(data.get("tests") or []), list(data.get("ci_tests") or data.get("tests") or [])
    if not tests:
        problems.append("`tests:` (the pytest arguments each guest runs) is empty")
    if problems:
        raise MatrixError(f"{path}: " + "; ".join(problems))
    return Matrix(kernels, fallbacks, tests, ci_tests)


def modules_dir(root: str, release: str) -> str:
    # bookworm packages use /lib/modules; newer packaging moved to /usr/lib/modules
    for candidate in (os.path.join(root, "lib", "modules", release),
                      os.path.join(root, "usr", "lib", "modules", release)):
        if os.path.isdir(candidate):
            return candidate
    return os.path.join(root, "lib", "modules", release)


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise MatrixError(f"{tool} not found (fix: apt-get install {package})")
    return path


class PrivateApt:
    """apt-get/apt-cache for one suite, with state and cache of their own under the cache folder."""

    def __init__(self, suite: str, cache: str = CACHE, check_valid_until: bool = True):
        self.suite = suite
        self.dir = os.path.join(cache, "apt", suite)
        self.check_valid_until = check_valid_until

    def options(self) -> list[str]:
        d = self.dir
        options = ["-o", f"Dir::Etc::SourceList={d}/sources.list", "-o", f"Dir::Etc::SourceParts={d}/empty",
                   "-o", f"Dir::State={d}/state", "-o", f"Dir::State::status={d}/status",
                   "-o", f"Dir::Cache={d}/cache", "-o", "Acquire::Languages=none",
                   "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]
        if not self.check_valid_until:
            # only the date check: InRelease is still verified against the keyring, packages by hash
            options += ["-o", "Acquire::Check-Valid-Until=false"]
        return options

    def update(self) -> None:
        for sub in ("empty", "state/lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(os.path.join(self.dir, "sources.list"), "w", encoding="utf-8") as handle:
            handle.write(f"deb [signed-by={KEYRING}] {MIRROR} {self.suite} main\n")
        open(os.path.join(self.dir, "status"), "a", encoding="utf-8").close()
        self._run([_need("apt-get", "apt"), *self.options(), "-q", "update"], "apt-get update", timeout=600)

    def show(self, package: str) -> dict[str, str]:
        """The candidate's control fields (apt-cache show prints the newest version first)."""
        out = self._run([_need("apt-cache", "apt"), *self.options(), "show", "--no-all-versions", package],
                        f"apt-cache show {package}", timeout=60)
        return parse_control(out)

    def download(self, packages: list[str], into: str) -> list[str]:
        os.makedirs(into, exist_ok=True)
        self._run([_need("apt-get", "apt"), *self.options(), "-q", "download", *packages],
                  "apt-get download " + " ".join(packages), timeout=900, cwd=into)
        return [max(glob.glob(os.path.join(into, f"{p}_*.deb"))) for p in packages]

    def _run(self, argv: list[str], what: str, timeout: int, cwd: str | None = None) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired as err:
            raise MatrixError(f"{what} ({self.suite}): no answer in {timeout} s; is {MIRROR} reachable? "
                              f"(check: curl -sI {MIRROR}/dists/{self.suite}/Release)") from err
        if result.returncode != 0:
            fix = (f"fix: `check_valid_until: false` for the {self.suite} kernel in kernels.yaml"
                   if "is expired" in result.stderr and self.check_valid_until
                   else f"check: curl -sI {MIRROR}/dists/{self.suite}/Release")
            raise MatrixError(f"{what} ({self.suite}) failed: {result.stderr.strip()[-800:]} ({fix})")
        return result.stdout


def parse_control(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first stanza only
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def versioned_dependency(depends: str, prefix: str) -> str:
    """The `linux-image-<abi>-amd64` a meta package depends on (first alternative that matches)."""
    for clause in depends.split(","):
        for alternative in clause.split("|"):
            name = alternative.strip().split(" ")[0]
            if name.startswith(prefix) and name != f"{prefix}amd64":
                return name
    raise MatrixError(f"no {prefix}* dependency in `Depends: {depends}`")


def release_parts(depends: str, release: str) -> list[str]:
    """The packages of this very release an image package depends on (first alternative of each
    clause): none up to trixie; linux-base-, linux-binary- and linux-modules-<release> in 7.x."""
    parts = []
    for clause in depends.split(","):
        names = [a.strip().split(" ")[0] for a in clause.split("|") if a.strip()]
        name = next((n for n in names if n.endswith(f"-{release}")), None)
        if name and name not in parts:
            parts.append(name)
    return parts


def fetch(spec: KernelSpec, cache: str = CACHE, say=print) -> Kernel:
    """The kernel of `spec`, from the cache when complete there, else fetched and unpacked."""
    target = os.path.join(cache, "kernels", spec.name)
    stamp = os.path.join(target, "complete.json")
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as handle:
            done = json.load(handle)
        return Kernel(spec, done["release"], os.path.join(target, "root"), tuple(done["packages"]))
    _need("dpkg-deb", "dpkg")
    _need("depmod", "kmod")
    apt = PrivateApt(spec.suite, cache, spec.check_valid_until)
    say(f"matrix: fetching {spec.name}: apt-get update ({spec.suite}, private lists under {apt.dir})")
    apt.update()
    image = versioned_dependency(apt.show("linux-image-amd64").get("Depends", ""), "linux-image-")
    release = image[len("linux-image-"):]
    if not release.startswith(spec.series + "."):
        raise MatrixError(f"{spec.name}: {spec.suite}'s linux-image-amd64 is {release}, expected series "
                          f"{spec.series} (update kernels.yaml)")
    parts = release_parts(apt.show(image).get("Depends", ""), release)
    headers = [f"linux-headers-{release}", f"linux-headers-{release.removesuffix('-amd64')}-common"]
    wanted = [image, *parts, *headers]
    versions = [f"{p}={apt.show(p)['Version']}" for p in wanted]
    say(f"matrix: fetching {spec.name}: " + ", ".join(versions))
    debs = apt.download(wanted, os.path.join(target, "debs"))
    root = os.path.join(target, "root")
    shutil.rmtree(root, ignore_errors=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True, timeout=300)
    kernel = Kernel(spec, release, root, tuple(versions))
    if not os.path.isfile(kernel.image):
        raise MatrixError(f"{', '.join([image, *parts])}: no boot/vmlinuz-{release} nor "
                          f"lib/modules/{release}/vmlinuz in them")
    # Debian runs depmod in postinst, which `dpkg-deb -x` skips; modules.dep is what modprobe reads
    moddir = kernel.moddir
    base = moddir[: -len(f"/lib/modules/{release}")]
    subprocess.run(["depmod", "-b", base, release], check=True, timeout=300)
    for path in kernel.headers:
        if not os.path.isdir(path):
            raise MatrixError(f"headers missing after unpacking: {path}")
    shutil.rmtree(os.path.join(target, "debs"))  # the unpacked tree is the cache; the .debs are not needed
    with open(stamp, "w", encoding="utf-8") as handle:
        json.dump({"release": release, "packages": list(versions)}, handle, indent=1)
    return kernel
