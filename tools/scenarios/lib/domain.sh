# What the scenarios share, sourced by them: a storage domain on a scratch disk,
# its qcow2 LVs, and the wait for a line in the log of a process.

uuid() { cat /proc/sys/kernel/random/uuid; }

# new_domain DISK: a VG of 1 MiB extents on DISK named by a new UUID ($vg), with
# the mailbox's inbox and outbox LVs, zeroed, as a domain's SPM and hosts use it.
new_domain() {
	vg=$(uuid)
	pvcreate -q "$1"
	vgcreate -q -s 1m "$vg" "$1"
	for mb in inbox outbox; do lvcreate -q -Zn -Wn -L 8m -n "$mb" "$vg"; done
	lvwatch mailbox init --inbox "/dev/$vg/inbox" --outbox "/dev/$vg/outbox"
}

# new_image LV SIZE VIRTUAL: an LV of SIZE in $vg holding an empty qcow2 image
# of VIRTUAL bytes.
new_image() {
	lvcreate -q -Zn -Wn -L "$2" -n "$1" "$vg"
	qemu-img create -q -f qcow2 "/dev/$vg/$1" "$3"
}

# logged PID PATTERN [COUNT]: waits until $log has COUNT (default 1) lines with
# PATTERN, at most 30 s; fails, printing $log, if PID ends first.
logged() {
	i=0
	until [ "$(grep -c "$2" "$log" 2>/dev/null || true)" -ge "${3:-1}" ] 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 300 ] || ! kill -0 "$1" 2>/dev/null; then
			cat "$log"
			echo "FAIL: no $2 in $log (process $1 gone, or 30 s passed)" >&2
			exit 1
		fi
		sleep 0.1
	done
}

# convert_checked MiB: qemu-img converts MiB of incompressible data onto
# $vg/$lv with cache=none, as a VM's writes go, then checks the image and
# compares it with its source; any failure sets status to non-zero.
convert_checked() {
	dd if=/dev/urandom of=/tmp/src.raw bs=1M count="$1" 2>/dev/null
	start=$(date +%s)
	qemu-img convert -n -t none -O qcow2 /tmp/src.raw "/dev/$vg/$lv" || status=$?
	echo "qemu-img convert of $1 MiB: exit $status in $(($(date +%s) - start)) s"
	qemu-img check -q "/dev/$vg/$lv" && echo "qemu-img check: clean" || status=1
	qemu-img compare -q /tmp/src.raw "/dev/$vg/$lv" && echo "qemu-img compare: equal to the source" || status=1
}

# stop_agent: prints the agent's status, stops it, and prints each extension
# of $lv from $log with its phases; the agent gone before, no extension, or an
# error logged sets status to 1.
stop_agent() {
	lvwatch status || status=1
	kill "$agent" 2>/dev/null || { echo "FAIL: the agent had exited" >&2; status=1; }
	wait "$agent" || true
	grep '"LV extended"' "$log" | sed 's/.*"from":"\([^"]*\)","to":"\([^"]*\)",\(.*\),"past_again.*/extended \1 -> \2: \3/'
	n=$(grep -c '"LV extended"' "$log" || true)
	echo "extensions: $n, final size: $(blockdev --getsize64 "/dev/$vg/$lv") bytes"
	[ "$n" -gt 0 ] || { echo "no extension" >&2; status=1; }
	if grep -q '"level":"error"' "$log"; then grep '"level":"error"' "$log"; status=1; fi
}
