#!/usr/bin/env bash
# One idempotent set-up step for a fresh Debian machine (12 here; 11, 13 and sid in the userland
# matrix): system packages, kernel headers where BCC looks for them, and the project venv.
# `make setup`, `make test`, `make demo`, `make matrix`, `make userlands` and .ci/run all call it;
# running it again changes nothing.
#
#   bash scripts/setup.sh              everything: the test suite, the benchmark, both matrices
#   bash scripts/setup.sh --no-matrix  without the matrices' own tools (QEMU, Vagrant, virtme-ng,
#                                      debootstrap): enough for the demo and the benchmark, not
#                                      for the whole test suite (tests/matrix runs `vagrant
#                                      validate` and the kernel matrix's preflight)
set -euo pipefail
cd "$(dirname "$0")/.."
matrix=1
for arg in "$@"; do
  case "$arg" in
    --no-matrix) matrix=0 ;;
    *) echo "usage: bash scripts/setup.sh [--no-matrix]" >&2; exit 2 ;;
  esac
done

# engines and tests: iptables .. haproxy (nftables: nft deletes the empty tables iptables-nft made);
# gcc, libc6-dev: the C-layout tests compile against the BPF structs, and pip builds
# python-iptables' C part where PyPI has no wheel for this Python (3.14 on sid); python3-dev its
# headers; bench/: wrk nginx-light iperf3 python3-matplotlib, and git (its results name the commit);
# openssh-client: ssh-keygen makes the host key of the SSH guard tests' sshd (below);
# python3-scapy: the hostile-input tests craft fragments and IPv6 extension headers (tests/hostile/);
# strace: their witness that a dry run makes no changing syscall
PACKAGES=(iptables nftables iproute2 util-linux python3-venv python3-bpfcc bpftool linux-headers-amd64 haproxy
          gcc libc6-dev python3-dev wrk nginx-light iperf3 python3-matplotlib git openssh-client python3-scapy strace)
# vagrant/: qemu-system-x86, busybox-static (virtme's initramfs) and kmod (depmod of the fetched
# kernels, modprobe in guests) for the kernel matrix; vagrant (`vagrant validate` of the boxes);
# debootstrap for the userland matrix's roots
if [ "$matrix" = 1 ]; then
  PACKAGES+=(qemu-system-x86 busybox-static kmod vagrant debootstrap)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  dpkg --configure -a  # finishes what an interrupted earlier run left unpacked (apt refuses until then)
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# tests/netns/test_ssh_guard.py runs a real sshd in a namespace: Debian's openssh-server unpacked
# into .cache/openssh-server/, never installed (the package would start and enable an sshd on the
# host), with the libraries it links against installed (libraries only: no service starts).
sshd_root=.cache/openssh-server
if [ ! -x "$sshd_root/usr/sbin/sshd" ]; then
  libs=$(apt-cache depends --important openssh-server 2>/dev/null | awk '/Depends: lib/ {print $2}' | tr -d '<>' || true)
  if [ -z "$libs" ]; then apt-get update -qq; libs=$(apt-cache depends --important openssh-server | awk '/Depends: lib/ {print $2}' | tr -d '<>'); fi
  # shellcheck disable=SC2086 # one word per library package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $libs >/dev/null
  rm -rf "$sshd_root" "$sshd_root.part" && mkdir -p "$sshd_root.part/deb"
  (cd "$sshd_root.part/deb" && apt-get download -qq openssh-server 2>/dev/null)
  dpkg-deb -x "$sshd_root.part"/deb/openssh-server_*.deb "$sshd_root.part"
  rm -rf "$sshd_root.part/deb" && mv "$sshd_root.part" "$sshd_root"
fi

# BCC compiles against /lib/modules/$(uname -r)/build and .../source. The running kernel may
# have no package of its own; our BPF programs use UAPI headers only, so the newest Debian
# headers serve (docs/architecture.md §6). Never replace links or directories that exist.
release=$(uname -r)
headers=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$headers" ]; then
  mkdir -p "/lib/modules/$release"
  for link in build source; do
    [ -e "/lib/modules/$release/$link" ] || ln -s "$headers" "/lib/modules/$release/$link"
  done
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
  rm -rf .venv
  # --system-site-packages: BCC's Python bindings come from Debian's python3-bpfcc.
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
extras=test,lint
[ "$matrix" = 1 ] && extras=test,lint,matrix
# the stamp holds the extras installed (an empty one, from before --no-matrix existed, meant all)
stamp=.venv/.tpctl-installed
installed=$(cat "$stamp" 2>/dev/null || true)
[ -f "$stamp" ] && [ -z "$installed" ] && installed=test,matrix
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$installed" != "$extras" ]; then
  # pip < 21.3 (Debian 11 ships 20.3) cannot install a pyproject.toml-only project in editable
  # mode; pyproject.toml's build requirements go into the venv itself for builds without isolation
  # (tests/netns/test_wheel.py; Debian 11's venv has setuptools 44, and setuptools < 70.1 needs
  # wheel for bdist_wheel). Without --upgrade pip installs only what is missing or too old.
  .venv/bin/pip install -q --disable-pip-version-check 'pip>=21.3'
  .venv/bin/pip install -q --disable-pip-version-check 'setuptools>=61' wheel
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
  echo "$extras" > "$stamp"
fi
.venv/bin/python -c "import bcc, iptc, pyroute2, click, yaml" && echo "setup: ok"
