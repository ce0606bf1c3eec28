#!/usr/bin/env bash
# Provision one box of boxes.yaml (run by the Vagrantfile, as root, in the box): what differs
# per distribution first, then the project's own set-up.
#
# scripts/setup.sh is the set-up on Debian 12 (apt, linux-headers-amd64, python3 3.11). Other
# distributions differ in three places, handled here before the same venv step:
#   - packages: dnf on Fedora; Ubuntu's headers are linux-headers-$(uname -r), its bpftool is in
#     linux-tools-$(uname -r); Debian 11 has no bpftool package (bullseye-backports has it)
#   - Python: tpctl needs >= 3.11; Ubuntu 18.04/20.04/22.04 and Debian 11 ship older, so uv
#     installs a 3.11 and the venv sees the distribution's BCC bindings through a .pth file
#     (BCC's Python package is pure Python over libbcc, any 3.x imports it)
#   - headers: /lib/modules/$(uname -r)/build and source must exist for BCC
set -euo pipefail
TPCTL_DIR=${TPCTL_DIR:-/tpctl}
cd "$TPCTL_DIR"
. /etc/os-release
echo "provision: $PRETTY_NAME, kernel $(uname -r)"

debian_packages() {
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(iptables iproute2 util-linux python3-venv python3-pip curl ca-certificates haproxy
              "linux-headers-$(uname -r)")
  case "$ID" in
    ubuntu) pkgs+=(python3-bpfcc bpfcc-tools "linux-tools-$(uname -r)" linux-tools-common) ;;
    debian) pkgs+=(python3-bpfcc)
            if [ "${VERSION_ID%%.*}" -ge 12 ]; then pkgs+=(bpftool); fi ;;
  esac
  apt-get update -qq
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
  if [ "$ID" = debian ] && [ "${VERSION_ID%%.*}" -lt 12 ]; then
    # bpftool for bullseye comes from bullseye-backports
    echo "deb http://deb.debian.org/debian ${VERSION_CODENAME}-backports main" \
      > /etc/apt/sources.list.d/tpctl-backports.list
    apt-get update -qq
    apt-get install -y -qq -t "${VERSION_CODENAME}-backports" bpftool >/dev/null
  fi
}

fedora_packages() {
  dnf install -y -q iptables-nft iptables-legacy iproute util-linux python3 python3-pip python3-bcc \
    bcc-tools bpftool haproxy curl "kernel-devel-$(uname -r)"
}

case "$ID" in
  debian|ubuntu) debian_packages ;;
  fedora) fedora_packages ;;
  *) echo "provision: $ID is not handled (fix: add its packages to vagrant/provision.sh)" >&2; exit 2 ;;
esac

# BCC looks at /lib/modules/$(uname -r)/build and source; Fedora's kernel-devel sets build only
release=$(uname -r)
for link in build source; do
  if [ ! -e "/lib/modules/$release/$link" ]; then
    tree=$(ls -d /usr/src/kernels/"$release" /usr/src/linux-headers-"$release" 2>/dev/null | head -n 1)
    [ -n "$tree" ] && ln -s "$tree" "/lib/modules/$release/$link"
  fi
done

python=/usr/bin/python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  # an older distribution Python: uv brings 3.11 (from its own releases, so the box needs network)
  "$python" -m pip install -q --user uv 2>/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
  uv python install 3.11
  python=$(uv python find 3.11)
fi

# the venv step of scripts/setup.sh, with the Python chosen above
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv --system-site-packages .venv
fi
bcc_dir=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(os.path.dirname(bcc.__file__)))' 2>/dev/null || true)
if [ -n "$bcc_dir" ] && ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  # the distribution's BCC bindings, seen by a Python that is not the distribution's
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/tpctl-bcc"
  ln -sfn "$bcc_dir/bcc" "$site/tpctl-bcc/bcc"
  echo "$site/tpctl-bcc" > "$site/tpctl-bcc.pth"
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import iptc, pyroute2, click, yaml" && echo "provision: ok"
.venv/bin/python -c "import bcc" 2>/dev/null && echo "provision: bcc importable" \
  || echo "provision: bcc not importable here (the eBPF engine will fall back, saying so)"
