#!/bin/sh
# Pin a running QEMU's vCPU threads one-to-one to (isolated) host CPUs, and undo it.
#
#   host_config/pin-vcpus.sh [--dry-run] [--state FILE] PID [CPULIST]
#   host_config/pin-vcpus.sh --restore [--dry-run] [--state FILE] PID
#
# PID is the QEMU process. Its vCPU threads are the tasks named "CPU <n>/KVM"
# (pveoi starts QEMU with -name ...,debug-threads=on). vCPU n goes to the n-th
# CPU of CPULIST (e.g. 2-3 or 2,3; round-robin if there are more vCPUs than
# CPUs); CPULIST defaults to the kernel's isolated CPUs
# (/sys/devices/system/cpu/isolated, from isolcpus= on the kernel command line).
# Every thread's previous affinity (Cpus_allowed_list) goes to the state file
# before it is changed; --restore puts it back for the threads that still exist
# and deletes the state file. The default state file is /var/lib/pveoi/pin-PID
# as root, and ${XDG_STATE_HOME:-$HOME/.local/state}/pveoi/pin-PID for a user
# pinning their own QEMU (who cannot write /var/lib).
#
# pveoi boots a fresh QEMU for every run, so for `pveoi ab` the simpler way is to
# run the whole harness on the isolated CPUs: QEMU and perf inherit the affinity:
#   taskset -c 2-3 pveoi ab ...
# This script is for a guest you keep running (pveoi boot).
#
# For tests: paths are under $PVEOI_SYSROOT, and $PVEOI_TASKSET replaces taskset.
# Exit status: 0 done, 1 refused or failed, 2 usage error.
set -eu

R="${PVEOI_SYSROOT:-}"
TASKSET="${PVEOI_TASKSET:-taskset}"
dry=0 restore=0 state="" pid="" cpus=""

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
	exit 2
}
say() { printf '%s\n' "$*"; }
die() { printf 'pin-vcpus: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run) dry=1 ;;
	--restore) restore=1 ;;
	--state) [ $# -ge 2 ] || usage; state="$2"; shift ;;
	--state=*) state="${1#--state=}" ;;
	-h|--help) usage ;;
	-*) printf 'pin-vcpus: unknown option %s\n' "$1" >&2; usage ;;
	*) if [ -z "$pid" ]; then pid="$1"; elif [ -z "$cpus" ]; then cpus="$1"; else usage; fi ;;
	esac
	shift
done
case "$pid" in ''|*[!0-9]*) usage ;; esac
if [ -z "$state" ]; then
	if [ "$(id -u)" -eq 0 ]; then
		state="$R/var/lib/pveoi/pin-$pid"
	else
		state="${XDG_STATE_HOME:-${HOME:?HOME is not set: pass --state FILE}/.local/state}/pveoi/pin-$pid"
	fi
fi
if [ $dry -eq 0 ] && [ -z "$R" ] && [ "$(id -u)" -ne 0 ] && [ ! -O "/proc/$pid" ]; then
	die "process $pid is not yours: run as root"
fi

# expand 2-3,5 -> "2 3 5"
expand() {
	out=""
	old_ifs=$IFS; IFS=,
	for part in $1; do
		case "$part" in
		*-*) a=${part%-*} b=${part#*-}
			while [ "$a" -le "$b" ]; do out="$out $a"; a=$((a + 1)); done ;;
		'') ;;
		*) out="$out $part" ;;
		esac
	done
	IFS=$old_ifs
	printf '%s' "${out# }"
}

run() {
	if [ $dry -eq 1 ]; then say "would run: $*"; else say "run: $*"; "$@" >/dev/null; fi
}

[ -d "$R/proc/$pid/task" ] || die "no process $pid"

if [ $restore -eq 1 ]; then
	if [ ! -f "$state" ]; then
		say "ok: nothing to restore ($state does not exist)"
		exit 0
	fi
	while IFS='|' read -r tid old; do
		if [ -d "$R/proc/$pid/task/$tid" ]; then
			run "$TASKSET" -pc "$old" "$tid"
		else
			say "ok: thread $tid is gone; nothing to restore"
		fi
	done < "$state"
	if [ $dry -eq 0 ]; then rm -f "$state"; say "restored; removed $state"; fi
	exit 0
fi

isolated=$(cat "$R/sys/devices/system/cpu/isolated" 2>/dev/null || true)
if [ -z "$cpus" ]; then
	[ -n "$isolated" ] || die "no isolated CPUs (boot with isolcpus=LIST nohz_full=LIST rcu_nocbs=LIST) and no CPULIST given"
	cpus="$isolated"
fi
list=$(expand "$cpus")
[ -n "$list" ] || die "empty CPU list '$cpus'"
iso=" $(expand "$isolated") "
for c in $list; do
	case "$iso" in *" $c "*) ;; *) say "warning: CPU $c is not isolated; other tasks may run there" ;; esac
done

if [ $dry -eq 0 ] && [ -f "$state" ]; then
	die "$state exists (already pinned?): run --restore first"
fi
n=0
for c in $list; do n=$((n + 1)); done
found=0
for task in "$R/proc/$pid/task"/*; do
	comm=$(cat "$task/comm" 2>/dev/null || true)
	case "$comm" in "CPU "*"/KVM") ;; *) continue ;; esac
	idx=${comm#CPU }; idx=${idx%/KVM}
	case "$idx" in ''|*[!0-9]*) continue ;; esac
	found=$((found + 1))
	i=0 target=""
	for c in $list; do
		if [ $i -eq $((idx % n)) ]; then target=$c; break; fi
		i=$((i + 1))
	done
	tid=${task##*/}
	old=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$task/status")
	if [ "$old" = "$target" ]; then
		say "ok: vCPU $idx (thread $tid) is on CPU $target"
		continue
	fi
	if [ $dry -eq 0 ]; then
		mkdir -p "$(dirname "$state")"
		printf '%s|%s\n' "$tid" "$old" >> "$state"
	fi
	verb=change; if [ $dry -eq 1 ]; then verb="would change"; fi
	say "$verb: vCPU $idx (thread $tid): CPUs $old -> $target"
	run "$TASKSET" -pc "$target" "$tid"
done
[ $found -gt 0 ] || die "process $pid has no 'CPU n/KVM' threads (not a QEMU with -name ...,debug-threads=on under KVM?)"
exit 0
