#!/usr/bin/env bash
# One idempotent set-up step for a fresh Debian 12 machine: system packages, kernel headers
# where BCC looks for them, and the project venv. `make setup`, `make test`, `make demo` and
# .ci/run all call this; running it again changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# engines and tests: iptables .. haproxy (nftables: nft deletes the empty tables iptables-nft made); bench/: wrk nginx-light iperf3 python3-matplotlib;
# vagrant/: qemu-system-x86, busybox-static (virtme's initramfs) and kmod (depmod of the fetched
# kernels, modprobe in guests) for the local kernel matrix; vagrant (`vagrant validate` of the boxes)
PACKAGES=(iptables nftables iproute2 util-linux python3-venv python3-bpfcc bpftool linux-headers-amd64 haproxy
          wrk nginx-light iperf3 python3-matplotlib qemu-system-x86 busybox-static kmod vagrant)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/build and .../source. The running kernel may
# have no package of its own; our BPF programs use UAPI headers only, so the newest Debian
# headers serve (architecture.md section 6). Never replace links or directories that exist.
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
stamp=.venv/.tpctl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,matrix]'
  touch "$stamp"
fi
.venv/bin/python -c "import bcc, iptc, pyroute2, click, yaml" && echo "setup: ok"
