#!/bin/sh
# Install the Debian 12 packages pveoi needs (idempotent: installs only what is missing).
#
#   host_config/install-deps.sh          install what is missing (root, or sudo)
#   host_config/install-deps.sh --check  only list what is missing; exit 1 if anything is
#
# What each is for:
#   qemu-system-x86 qemu-utils   the guests and the virtual KVM host
#   linux-source-6.1             kernel base 6.1 (guest/host source)
#   linux-source-6.12            kernel base 6.12 (Debian 12 carries it in bookworm-security)
#   build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils rsync patch
#                                kernel builds, patch series, initramfs
#   ccache                       incremental kernel builds (CCACHE_DIR under pveoi's cache)
#   busybox-static dropbear-bin iperf3
#                                the guest image: shell, SSH server, the net workload's client
#   linux-perf                   counting kvm:* tracepoints on the host
#   kmod lz4 zstd                module tools for fetched Debian kernels; expanding a
#                                bzImage to see which drivers are built in
#   chromium                     headless screenshots of the HTML report (its test)
set -eu

PACKAGES="qemu-system-x86 qemu-utils linux-source-6.1 linux-source-6.12 build-essential flex bison bc libelf-dev
libssl-dev cpio xz-utils rsync patch busybox-static dropbear-bin iperf3 linux-perf kmod
lz4 zstd ccache python3-venv chromium"
installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=""
for p in $PACKAGES; do
	installed "$p" || missing="$missing $p"
done

if [ -z "$missing" ]; then
	echo "install-deps: all packages present"
	exit 0
fi
if [ "${1:-}" = "--check" ]; then
	echo "install-deps: missing:$missing"
	exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "install-deps: need root to install:$missing; fix: run as root or install sudo" >&2
		exit 1
	fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
echo "install-deps: installing:$missing"
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
