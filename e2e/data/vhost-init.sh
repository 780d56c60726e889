#!/bin/sh
# pveoi virtual KVM host: PID 1 of the TCG L1 guest.
#
# The root filesystem is the real host's root, shared read-only over virtio-9p.
# This script makes it usable (proc, sys, dev, tracefs, a private tmpfs /tmp
# with the caller's own /tmp paths bound back in, the writable results share),
# checks that KVM really runs on kvm_amd with nested paging, runs the command
# pveoi wrote to $PVEOI_RESULTS/.pveoi-vhost/cmd.sh with its output on ttyS1,
# records its exit status and powers the machine off (QEMU runs -no-reboot).
#
# The kernel passes PVEOI_RESULTS (from its command line) in our environment.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
R="$PVEOI_RESULTS"
ctl="$R/.pveoi-vhost"

die_now() {
	echo "pveoi-vhost-error: $*" > /dev/console
	echo 1 > /proc/sys/kernel/sysrq 2>/dev/null
	echo b > /proc/sysrq-trigger
	sleep 60
}

mount -t proc proc /proc || die_now "cannot mount /proc"
mount -t sysfs sys /sys
grep -q " /dev devtmpfs " /proc/mounts || mount -t devtmpfs dev /dev || die_now "cannot mount /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs -o mode=0755 run /run || die_now "cannot mount /run"

# The host's root, reachable under /run/pveoi-host after /tmp is replaced.
mkdir -p /run/pveoi-host
mount --bind / /run/pveoi-host
mount -t tmpfs -o mode=1777 tmp /tmp || die_now "cannot mount /tmp"

[ -n "$R" ] || die_now "PVEOI_RESULTS is not set on the kernel command line"

# Paths the caller needs that live under the host's /tmp (checkout, venv, cache).
keep="/run/pveoi-host$ctl/keep"
if [ -f "$keep" ]; then
	while IFS= read -r p; do
		[ -n "$p" ] || continue
		mkdir -p "$p" && mount --bind "/run/pveoi-host$p" "$p"
	done < "$keep"
fi

mkdir -p "$R"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none pveoi-results "$R" \
	|| die_now "cannot mount the results share at $R"

hostname pveoi-vhost 2>/dev/null
ip link set lo up 2>/dev/null

dev=0; [ -c /dev/kvm ] && dev=1
svm=0; grep -qw svm /proc/cpuinfo && svm=1
npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null || echo missing)
nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null || echo missing)
avic=$(cat /sys/module/kvm_amd/parameters/avic 2>/dev/null || echo missing)
echo "dev=$dev svm=$svm npt=$npt nested=$nested avic=$avic" > "$ctl/kvm"
echo "pveoi-vhost-ready dev=$dev svm=$svm npt=$npt" > /dev/console

# Liveness for the caller: a counter rewritten every 5 s on the results share. Nested TCG
# now and then freezes this whole machine, and then no timeout in here can fire; the caller
# sees the counter stop and ends the run (e2e/vm/vhost.py, VirtualKvmHost._watch).
# On request (the caller writes ps-request: the command seems stuck), the same loop reports every
# process (state, kernel wait channel) and makes the command's Python processes dump their stacks
# (SIGUSR1, e2e/run/inner.py), before the caller tears this machine down.
( i=0; while :; do
	i=$((i + 1)); echo "$i" > "$ctl/beat"
	if [ -f "$ctl/ps-request" ]; then
		rm -f "$ctl/ps-request"
		ps -eo pid,ppid,stat,wchan:32,etime,time,args > "$ctl/ps.tmp" 2>&1
		# The system call each user process waits in (number and arguments): what wchan cannot say
		# on a kernel without kallsyms.
		for d in /proc/[0-9]*; do
			[ -n "$(head -c 1 "$d/cmdline" 2>/dev/null)" ] || continue  # a kernel thread (proc sizes read 0)
			echo "${d#/proc/} syscall: $(cat "$d/syscall" 2>&1)"
		done >> "$ctl/ps.tmp" 2>/dev/null
		pkill -USR1 -f "e2e.run.inner" 2>/dev/null
		mv "$ctl/ps.tmp" "$ctl/ps"
	fi
	sleep 5
done ) < /dev/null > /dev/null 2>&1 &
beat=$!

stty -F /dev/ttyS1 raw -echo 2>/dev/null
/bin/sh "$ctl/cmd.sh" < /dev/null > /dev/ttyS1 2>&1
echo $? > "$ctl/rc.tmp" && mv "$ctl/rc.tmp" "$ctl/rc"
kill "$beat" 2>/dev/null
sync
echo 1 > /proc/sys/kernel/sysrq
echo b > /proc/sysrq-trigger
sleep 60
