#!/bin/sh
# pveoi virtual KVM host: PID 1 of the initramfs booted with an L1 kernel whose
# virtio-PCI, 9p and KVM are modules (a distribution's packaged kernel, e.g.
# Debian's linux-image-amd64; pveoi's host flavour has them built in and needs
# no initramfs). Written by e2e/build/vhostkernel.py with busybox and the
# modules, decompressed, in load order (kmod's modinfo, at build time).
#
# Loads the modules (each with its MODULE.PARAM=VALUE words of the kernel
# command line, as modprobe would), mounts the host's root over 9p with the
# command line's rootflags, read-only, just as the kernel mounts it for the
# built-in kind, and hands over to the command line's init= with our own
# arguments (those after "--"). The environment (PVEOI_RESULTS) passes through.
# Failures print the virtual host's error line and power off.

export PATH=/bin

fail() {
	echo "pveoi-vhost-error: $*"
	sleep 1
	reboot -f
	sleep 60
}

mount -t proc proc /proc || fail "initramfs: cannot mount /proc"
read -r cmdline < /proc/cmdline
umount /proc

moddir=/lib/modules/$(uname -r)
[ -f "$moddir/pveoi-modules.order" ] ||
	fail "initramfs: no modules for kernel $(uname -r) (the initramfs was made for another kernel)"
while read -r mod; do
	[ -n "$mod" ] || continue
	name=${mod##*/}
	name=${name%.ko}
	name=$(echo "$name" | tr - _)
	params=
	for w in $cmdline; do
		case "$w" in
		"$name".*=*) params="$params ${w#"$name".}" ;;
		esac
	done
	# shellcheck disable=SC2086  # the words are the parameters, one each
	out=$(insmod "$moddir/$mod" $params 2>&1) || case "$out" in
		*"File exists"*) ;;
		*) fail "initramfs: insmod $mod: $out" ;;
	esac
done < "$moddir/pveoi-modules.order"

rootflags=trans=virtio
init=/sbin/init
for w in $cmdline; do
	case "$w" in
	rootflags=*) rootflags=${w#rootflags=} ;;
	init=*) init=${w#init=} ;;
	esac
done
mkdir -p /newroot
mount -t 9p -o "$rootflags,ro" /dev/root /newroot || fail "initramfs: cannot mount the host's root over 9p"
exec switch_root /newroot "$init" "$@"
