#!/bin/sh
# Install the Debian packages pveoi needs (idempotent: installs only what is missing or too old).
#
#   host_config/install-deps.sh          install what is missing (root, or sudo)
#   host_config/install-deps.sh --check  only list what is missing; exit 1 if anything is
#
# What each is for:
#   qemu-system-x86 qemu-utils   the guests and the virtual KVM host: QEMU 10.0 or newer. On Debian 12
#                                that is bookworm-backports' 10.0.2 (added and pinned here, for the QEMU
#                                packages only): under nested TCG it crashed fewer L2 guests than
#                                bookworm's 7.2 (README, "QEMU"); Debian 13 carries 10.0 itself
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
# The QEMU pveoi needs at least, and the packages that come from the same source.
QEMU_MIN="1:10.0"
QEMU_PACKAGES="qemu-system-x86 qemu-utils qemu-system-common qemu-system-data qemu-system-gui seabios"
BACKPORTS_LIST=/etc/apt/sources.list.d/pveoi-bookworm-backports.sources
BACKPORTS_PIN=/etc/apt/preferences.d/pveoi-qemu

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

qemu_too_old() {
	v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null) || return 1
	dpkg --compare-versions "$v" lt "$QEMU_MIN"
}

codename=""
if [ -r /etc/os-release ]; then
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
fi

# Where apt can give QEMU 10: Debian 12 through bookworm-backports, or a release whose own is 10+.
qemu10_available() {
	[ "$codename" = bookworm ] && return 0
	c=$(apt-cache policy qemu-system-x86 2>/dev/null | sed -n 's/^ *Candidate: *//p')
	[ -n "$c" ] && [ "$c" != "(none)" ] && dpkg --compare-versions "$c" ge "$QEMU_MIN"
}

missing=""
for p in $PACKAGES; do
	installed "$p" || missing="$missing $p"
done
said="$missing"
if installed qemu-system-x86 && qemu_too_old; then
	old=$(dpkg-query -W -f='${Version}' qemu-system-x86)
	if qemu10_available; then
		missing="$missing qemu-system-x86"
		said="$said qemu-system-x86>=10.0(installed:$old)"
	else  # pveoi runs on it, with more nested-TCG crashes (pveoi doctor says so too)
		echo "install-deps: QEMU $old is older than 10.0 and this system's apt has no newer one; keeping it" >&2
	fi
fi

if [ -z "$missing" ]; then
	echo "install-deps: all packages present"
	exit 0
fi
if [ "${1:-}" = "--check" ]; then
	echo "install-deps: missing:$said"
	exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "install-deps: need root to install:$said; fix: run as root or install sudo" >&2
		exit 1
	fi
fi
export DEBIAN_FRONTEND=noninteractive

# Debian 12: QEMU from bookworm-backports, from the mirror the system already uses, pinned so that
# only the QEMU packages come from there (everything else stays bookworm's).
target=""
case "$missing" in *qemu-*) qemu_missing=1 ;; *) qemu_missing="" ;; esac
if [ "$codename" = bookworm ] && [ -n "$qemu_missing" ]; then
	target="-t bookworm-backports"
	# shellcheck disable=SC2046
	if ! grep -qs '^[^#]*bookworm-backports' /etc/apt/sources.list \
		$(ls /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null); then
		mirror=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\/\{0,1\}\)[[:space:]]*$/\1/p' \
			/etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
		[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
		echo "install-deps: adding bookworm-backports ($mirror) for QEMU 10.0"
		printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
			"$mirror" /usr/share/keyrings/debian-archive-keyring.gpg | $SUDO tee "$BACKPORTS_LIST" >/dev/null
	fi
	printf 'Package: %s\nPin: release n=bookworm-backports\nPin-Priority: 500\n' "$QEMU_PACKAGES" \
		| $SUDO tee "$BACKPORTS_PIN" >/dev/null
fi

$SUDO apt-get update -qq
echo "install-deps: installing:$said"
rest=""
for p in $missing; do
	case "$p" in
	qemu-*) ;;
	*) rest="$rest $p" ;;
	esac
done
if [ -n "$rest" ]; then
	# shellcheck disable=SC2086
	$SUDO apt-get install -y -qq --no-install-recommends $rest
fi
case "$qemu_missing" in
1)
	# shellcheck disable=SC2086
	$SUDO apt-get install -y -qq --no-install-recommends $target qemu-system-x86 qemu-utils
	if qemu_too_old; then
		echo "install-deps: QEMU is still $(dpkg-query -W -f='${Version}' qemu-system-x86), older than 10.0;" \
			"fix: install QEMU 10.0 or newer (on Debian 12 from bookworm-backports)" >&2
		exit 1
	fi
	;;
esac
