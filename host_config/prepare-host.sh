#!/bin/sh
# Prepare a hardware KVM host for measuring PV EOI, and put it back afterwards.
#
#   host_config/prepare-host.sh [--dry-run] [STEPS] [--permanent] [--group G] [--state FILE]
#   host_config/prepare-host.sh --restore [--dry-run] [--state FILE]
#
# STEPS (default: all three):
#   --apicv     APICv (kvm_intel enable_apicv) / AVIC (kvm_amd avic) off: reloads
#               the vendor module with the parameter off. Refused while VMs run.
#               With hardware EOI virtualisation EOIs never exit, KVM never arms
#               PV EOI and there is nothing to measure.
#   --perf      kernel.perf_event_paranoid down to 1 (a user may count kernel-mode
#               events, tracepoints included, of their own processes) and tracefs
#               (/sys/kernel/tracing) group-readable by --group (default kvm), so a
#               non-root user's perf can resolve kvm:* tracepoint ids.
#   --governor  every CPU's cpufreq scaling_governor to "performance".
# Options:
#   --dry-run   print every change and change nothing.
#   --restore   put back exactly what the state file recorded, then delete it.
#   --permanent also write /etc/modprobe.d/pveoi-kvm.conf (options ... =0) and
#               /etc/sysctl.d/60-pveoi-perf.conf; --restore removes them again.
#   --group G   the group that may read tracefs (name or number; default kvm).
#   --state F   the state file (default /var/lib/pveoi/host-state).
#
# Every change prints one line ("change: ..." or, with --dry-run, "would change: ...");
# what is already as wanted prints "ok: ...". The previous value of everything
# changed is appended to the state file before it is changed, once: running the
# script twice records nothing new, so --restore still restores the originals.
#
# Reloading the vendor module (modprobe -r also unloads kvm) would drop every
# other parameter of kvm and of the vendor module set at runtime or by hand
# (nested, ept, kvm.halt_poll_ns, ...): their values are read from
# /sys/module/{kvm,MODULE}/parameters before the unload and passed back on the
# load (modprobe kvm ... first), and recorded in the state file. A value that
# cannot be passed as KEY=VALUE (e.g. with a space) is named and left out; if
# the load with them fails, the module is loaded with the one changed parameter.
#
# --restore removes each line from the state file once it is restored, so after
# a failure a second --restore resumes where the first stopped.
#
# For tests, every path is under $PVEOI_SYSROOT (default: the real root), and
# the commands it runs can be replaced: $PVEOI_MODPROBE (modprobe), $PVEOI_MOUNT
# (mount), $PVEOI_UMOUNT (umount). With $PVEOI_SYSROOT set the script does not
# insist on root.
#
# Exit status: 0 done (or nothing to do), 1 refused or failed, 2 usage error.
set -eu

R="${PVEOI_SYSROOT:-}"
MODPROBE="${PVEOI_MODPROBE:-modprobe}"
MOUNT="${PVEOI_MOUNT:-mount}"
UMOUNT="${PVEOI_UMOUNT:-umount}"
STATE="$R/var/lib/pveoi/host-state"
TRACEFS="$R/sys/kernel/tracing"
PARANOID="$R/proc/sys/kernel/perf_event_paranoid"
PARANOID_WANTED=1
MODPROBE_CONF="$R/etc/modprobe.d/pveoi-kvm.conf"
SYSCTL_CONF="$R/etc/sysctl.d/60-pveoi-perf.conf"

dry=0 restore=0 permanent=0 group=kvm
do_apicv=0 do_perf=0 do_governor=0

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
	exit 2
}
say() { printf '%s\n' "$*"; }
die() { printf 'prepare-host: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run) dry=1 ;;
	--restore) restore=1 ;;
	--permanent) permanent=1 ;;
	--apicv) do_apicv=1 ;;
	--perf) do_perf=1 ;;
	--governor) do_governor=1 ;;
	--all) do_apicv=1 do_perf=1 do_governor=1 ;;
	--group) [ $# -ge 2 ] || usage; group="$2"; shift ;;
	--group=*) group="${1#--group=}" ;;
	--state) [ $# -ge 2 ] || usage; STATE="$2"; shift ;;
	--state=*) STATE="${1#--state=}" ;;
	-h|--help) usage ;;
	*) printf 'prepare-host: unknown option %s\n' "$1" >&2; usage ;;
	esac
	shift
done
if [ $((do_apicv + do_perf + do_governor)) -eq 0 ]; then
	do_apicv=1 do_perf=1 do_governor=1
fi
if [ $dry -eq 0 ] && [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then
	die "changing the host needs root (try --dry-run to see what would change)"
fi

# ------------------------------------------------------------------ helpers

# read_value FILE: the file's content without its trailing newline, or "" when unreadable.
read_value() { cat "$1" 2>/dev/null || true; }

# write_value FILE VALUE WHAT
write_value() {
	was=$(read_value "$1")
	if [ $dry -eq 1 ]; then
		say "would change: $3: $was -> $2 ($1)"
	else
		printf '%s\n' "$2" > "$1" || die "cannot write $2 to $1"
		say "change: $3: $was -> $2 ($1)"
	fi
}

# record KIND PATH OLD: remember the original value, once per PATH (so a second
# run does not overwrite the originals with the values the first run set).
record() {
	if [ $dry -eq 1 ] || [ $restore -eq 1 ]; then return 0; fi
	mkdir -p "$(dirname "$STATE")"
	if [ -f "$STATE" ] && grep -q "^$1|$2|" "$STATE"; then
		return 0
	fi
	printf '%s|%s|%s\n' "$1" "$2" "$3" >> "$STATE"
}

# run CMD...: run a command (or print it under --dry-run).
run() {
	if [ $dry -eq 1 ]; then
		say "would run: $*"
	else
		say "run: $*"
		"$@"
	fi
}

# vms_using MODULE: the number of VMs holding the module (each VM takes a
# reference on the vendor module), and the processes with /dev/kvm open.
vms_using() {
	refs=$(read_value "$R/sys/module/$1/refcnt")
	pids=""
	for fd in "$R"/proc/[0-9]*/fd/*; do
		[ -e "$fd" ] || [ -L "$fd" ] || continue
		case "$(readlink "$fd" 2>/dev/null)" in
		/dev/kvm|anon_inode:kvm-vm)
			pid=${fd%/fd/*}; pid=${pid##*/}
			case " $pids " in *" $pid "*) ;; *) pids="$pids $pid" ;; esac ;;
		esac
	done
	in_use_refs=${refs:-0}
	in_use_pids=${pids# }
}

# refuse_if_vms MODULE ACTION
refuse_if_vms() {
	vms_using "$1"
	if [ "$in_use_refs" != 0 ] || [ -n "$in_use_pids" ]; then
		what="$1 is in use by $in_use_refs VM(s) ($R/sys/module/$1/refcnt)"
		[ -n "$in_use_pids" ] && what="$what; processes with /dev/kvm open: $in_use_pids"
		die "refusing to $2: $what. Stop those VMs (QEMU) and run this again."
	fi
}

# vendor: sets mod/param/feature for the loaded KVM vendor module, or mod="".
vendor() {
	mod="" param="" feature=""
	if [ -d "$R/sys/module/kvm_intel" ]; then
		mod=kvm_intel param=enable_apicv feature=APICv
	elif [ -d "$R/sys/module/kvm_amd" ]; then
		mod=kvm_amd param=avic feature=AVIC
	fi
}

is_on() { case "$1" in Y|y|1) return 0 ;; *) return 1 ;; esac; }

# module_params MODULE [SKIP]: "KEY=VALUE ..." for every parameter of the loaded
# MODULE (except SKIP), as modprobe takes them; a value modprobe cannot take as
# one word (empty, a space, quotes...) is named on stderr and left out.
module_params() {
	out=""
	for f in "$R/sys/module/$1/parameters"/*; do
		[ -f "$f" ] && [ -r "$f" ] || continue
		k=${f##*/}
		[ "$k" = "${2:-}" ] && continue
		v=$(read_value "$f")
		case "$v" in
		''|*[!A-Za-z0-9_.,:+-]*)
			printf 'prepare-host: note: %s.%s=%s is not passed back on reload (not a plain value); set it again by hand if needed\n' \
				"$1" "$k" "$v" >&2
			continue ;;
		esac
		out="$out $k=$v"
	done
	printf '%s' "${out# }"
}

# reload MODULE PARAM VALUE: unload the vendor module (and kvm with it) and load
# it with PARAM=VALUE, passing back every other parameter of kvm and MODULE.
reload() {
	kvm_params=$(module_params kvm)
	mod_params=$(module_params "$1" "$2")
	record params kvm "$kvm_params"
	record params "$1" "$mod_params"
	run "$MODPROBE" -r "$1" || die "cannot unload $1 (a VM may have started; nothing else was changed by this step)"
	if [ -n "$kvm_params" ]; then
		# shellcheck disable=SC2086 # one word per KEY=VALUE
		run "$MODPROBE" kvm $kvm_params || {
			say "warning: cannot load kvm with its previous parameters ($kvm_params); loading it without them"
			run "$MODPROBE" kvm || die "cannot load kvm: load it by hand (modprobe kvm) and check dmesg"
		}
	fi
	# shellcheck disable=SC2086
	run "$MODPROBE" "$1" "$2=$3" $mod_params || {
		[ -n "$mod_params" ] || die "cannot load $1 $2=$3: load it by hand (modprobe $1) and check dmesg"
		say "warning: cannot load $1 with its previous parameters ($mod_params); loading it with $2=$3 only"
		run "$MODPROBE" "$1" "$2=$3" || die "cannot load $1 $2=$3: load it by hand (modprobe $1) and check dmesg"
	}
}

# conf_file PATH CONTENT WHAT: write a pveoi-owned config file, recording whether it existed.
conf_file() {
	old=$(read_value "$1")
	if [ -f "$1" ] && [ "$old" = "$2" ]; then
		say "ok: $3 already in $1"
		return 0
	fi
	if [ $dry -eq 1 ]; then
		say "would change: $3: write $1"
		return 0
	fi
	if [ -f "$1" ]; then
		mkdir -p "$(dirname "$STATE")"
		cp -p "$1" "$STATE.$(basename "$1")"
		record file "$1" "$STATE.$(basename "$1")"
	else
		record file "$1" -
	fi
	mkdir -p "$(dirname "$1")"
	printf '%s\n' "$2" > "$1"
	say "change: $3: wrote $1"
}

# ------------------------------------------------------------------ steps

step_apicv() {
	vendor
	if [ -z "$mod" ]; then
		others=""
		for m in kvm_pvm kvm; do [ -d "$R/sys/module/$m" ] && others="$others $m"; done
		say "ok: apicv/avic: neither kvm_intel nor kvm_amd is loaded${others:+ (loaded:$others)}; no APICv/AVIC to turn off"
		return 0
	fi
	file="$R/sys/module/$mod/parameters/$param"
	[ -r "$file" ] || die "$file is missing: is $mod too old to have $param?"
	old=$(read_value "$file")
	if is_on "$old"; then
		refuse_if_vms "$mod" "reload $mod with $param=N"
		if [ $dry -eq 1 ]; then say "would change: $feature: $mod.$param $old -> N (reload $mod)"; fi
		record module "$mod/$param" "$old"
		reload "$mod" "$param" N
		[ $dry -eq 1 ] || say "change: $feature: $mod.$param $old -> $(read_value "$file")"
	else
		say "ok: $feature is off ($mod.$param=$old)"
	fi
	if [ $permanent -eq 1 ]; then
		conf_file "$MODPROBE_CONF" "options $mod $param=0" "$feature off at every boot"
	fi
}

step_perf() {
	old=$(read_value "$PARANOID")
	if [ -z "$old" ]; then
		say "ok: perf: $PARANOID is missing (a kernel without perf events?); nothing to lower"
	elif [ "$old" -gt $PARANOID_WANTED ]; then
		record sysctl "$PARANOID" "$old"
		write_value "$PARANOID" $PARANOID_WANTED "kernel.perf_event_paranoid"
	else
		say "ok: kernel.perf_event_paranoid=$old (<= $PARANOID_WANTED: users may count their own processes' tracepoints)"
	fi
	if [ $permanent -eq 1 ]; then
		conf_file "$SYSCTL_CONF" "kernel.perf_event_paranoid = $PARANOID_WANTED" "perf_event_paranoid at every boot"
	fi

	if [ ! -d "$TRACEFS/events" ]; then
		if [ $dry -eq 0 ]; then
			mkdir -p "$TRACEFS"
		fi
		run "$MOUNT" -t tracefs nodev "$TRACEFS" || die "cannot mount tracefs on $TRACEFS"
		record mount "$TRACEFS" unmounted  # only once mounted: --restore unmounts what is recorded
		if [ $dry -eq 1 ]; then
			say "would change: tracefs: group $gid, mode 0750 ($TRACEFS)"
			return 0
		fi
	fi
	cur_gid=$(stat -c %g "$TRACEFS") cur_mode=$(stat -c %a "$TRACEFS")
	new_mode=$(printf '%o' $((0$cur_mode | 050)))
	if [ "$cur_gid" = "$gid" ] && [ "$new_mode" = "$cur_mode" ]; then
		say "ok: tracefs: group $gid may read $TRACEFS (mode $cur_mode)"
		return 0
	fi
	if [ $dry -eq 1 ]; then say "would change: tracefs: group $cur_gid -> $gid, mode $cur_mode -> $new_mode ($TRACEFS)"; fi
	record tracefs "$TRACEFS" "$cur_gid:$cur_mode"
	run "$MOUNT" -o "remount,gid=$gid,mode=0$new_mode" "$TRACEFS" || die "cannot remount $TRACEFS"
	[ $dry -eq 1 ] || say "change: tracefs: group $cur_gid -> $gid, mode $cur_mode -> $new_mode ($TRACEFS)"
}

step_governor() {
	found=0
	for gov in "$R"/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
		[ -f "$gov" ] || continue
		found=1
		old=$(read_value "$gov")
		cpu=${gov%/cpufreq/*}; cpu=${cpu##*/}
		if [ "$old" = performance ]; then
			say "ok: $cpu governor is performance"
			continue
		fi
		avail=$(read_value "${gov%/*}/scaling_available_governors")
		case " $avail " in
		*" performance "*) ;;
		*) say "ok: $cpu has no performance governor (available: $avail); left at $old"; continue ;;
		esac
		record governor "$gov" "$old"
		write_value "$gov" performance "$cpu governor"
	done
	[ $found -eq 1 ] || say "ok: governor: no cpufreq (a VM, or the firmware controls frequency); nothing to set"
}

# ------------------------------------------------------------------ restore

do_restore() {
	if [ ! -f "$STATE" ]; then
		say "ok: nothing to restore ($STATE does not exist)"
		return 0
	fi
	# Refuse before touching anything if a module reload is due while VMs run.
	while IFS='|' read -r kind path old; do
		[ "$kind" = module ] || continue
		m=${path%%/*} p=${path#*/}
		cur=$(read_value "$R/sys/module/$m/parameters/$p")
		if [ "$cur" != "$old" ] && [ -d "$R/sys/module/$m" ]; then
			refuse_if_vms "$m" "reload $m with $p=$old"
		fi
	done < "$STATE"
	# Last change first (a here-document, not a pipe: die must end the script).
	# Each line leaves the state file once restored, so after a failure (die)
	# the next --restore resumes with the line that failed.
	reversed=$(sed -n '1!G;h;$p' "$STATE")
	while IFS='|' read -r kind path old; do
		[ -n "$kind" ] || continue
		case "$kind" in
		sysctl|governor)
			if [ "$(read_value "$path")" = "$old" ]; then
				say "ok: $path is $old"
			else
				write_value "$path" "$old" "restore $kind"
			fi ;;
		module)
			m=${path%%/*} p=${path#*/}
			cur=$(read_value "$R/sys/module/$m/parameters/$p")
			if [ "$cur" = "$old" ]; then
				say "ok: $m.$p is $old"
			elif [ ! -d "$R/sys/module/$m" ]; then
				hint=$(grep "^params|$m|" "$STATE" | cut -d'|' -f3-) || true
				kvm_hint=$(grep "^params|kvm|" "$STATE" | cut -d'|' -f3-) || true
				say "ok: $m is not loaded; load it with:${kvm_hint:+ modprobe kvm $kvm_hint &&} modprobe $m $p=$old${hint:+ $hint}"
			else
				if [ $dry -eq 1 ]; then say "would change: restore $m.$p $cur -> $old (reload $m)"; fi
				reload "$m" "$p" "$old"
				[ $dry -eq 1 ] || say "change: restore $m.$p -> $(read_value "$R/sys/module/$m/parameters/$p")"
			fi ;;
		params)
			# What a reload passed back (a --restore reload passes the current ones
			# back again); kept until the end for the hint above.
			[ -z "$old" ] || say "ok: $path parameters kept across reloads: $old"
			continue ;;
		tracefs)
			g=${old%%:*} mo=${old#*:}
			run "$MOUNT" -o "remount,gid=$g,mode=0$mo" "$path" || die "cannot remount $path" ;;
		mount)
			if [ -r "$R/proc/mounts" ] && ! awk -v p="$path" '$2 == p { found = 1 } END { exit !found }' "$R/proc/mounts"; then
				say "ok: $path is not mounted (any more); nothing to unmount"
			else
				run "$UMOUNT" "$path" || die "cannot unmount $path"
			fi ;;
		file)
			if [ "$old" = - ]; then
				run rm -f "$path"
			elif [ ! -e "$old" ]; then
				say "skip: the backup $old of $path is missing (already restored?); leaving $path as it is"
			else
				run cp -p "$old" "$path" || die "cannot restore $path from $old"
				run rm -f "$old"
			fi ;;
		*) die "unknown entry '$kind' in $STATE" ;;
		esac
		[ $dry -eq 1 ] || forget "$kind|$path|$old"
	done <<EOF
$reversed
EOF
	if [ $dry -eq 0 ]; then
		rm -f "$STATE"
		say "restored everything recorded; removed $STATE"
	fi
}

# forget LINE: remove one restored line from the state file.
forget() {
	grep -vxF -e "$1" "$STATE" > "$STATE.new" || [ $? -eq 1 ] || die "cannot rewrite $STATE"
	mv "$STATE.new" "$STATE"
}

# ------------------------------------------------------------------ main

if [ $dry -eq 1 ]; then say "dry run: nothing is changed"; fi
if [ $restore -eq 1 ]; then
	do_restore
	exit 0
fi
# Check what can refuse before changing anything: a module reload while VMs
# run, and a --group that does not exist.
if [ $do_apicv -eq 1 ]; then
	vendor
	if [ -n "$mod" ] && is_on "$(read_value "$R/sys/module/$mod/parameters/$param")"; then
		refuse_if_vms "$mod" "reload $mod with $param=N"
	fi
fi
if [ $do_perf -eq 1 ]; then
	case "$group" in
	''|*[!0-9]*) gid=$(getent group "$group" | cut -d: -f3) || true
		[ -n "$gid" ] || die "group $group does not exist: create it (groupadd --system $group) or pass --group GROUP" ;;
	*) gid=$group ;;
	esac
fi
if [ $do_apicv -eq 1 ]; then step_apicv; fi
if [ $do_perf -eq 1 ]; then step_perf; fi
if [ $do_governor -eq 1 ]; then step_governor; fi
if [ $dry -eq 0 ] && [ -f "$STATE" ]; then
	say "previous values are in $STATE; undo with: $0 --restore --state $STATE"
fi
exit 0
