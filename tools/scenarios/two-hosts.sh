#!/bin/sh
# vmtest: -guests 2
# Two hosts of one storage domain, two guests (tools/vmtest -script -guests 2)
# on the same scratch disks: guest 1 is the SPM host, with the VG, its
# mailbox and a 64 MiB qcow2 LV it leaves inactive, and runs `lvwatch spm`
# alone; guest 2 is the VM's host: it activates the LV and runs `lvwatch agent`
# (no --spm) while qemu-img converts incompressible data, several times the
# LV's first size, onto it with cache=none. Every extension crosses the two
# kernels through the mailbox; the convert must finish with no error (no
# ENOSPC), the image check clean and compare equal to its source. The guests
# coordinate on the second disk alone, a flag board: "READY VG LV", then "DONE".
# Usage: sh two-hosts.sh [SOURCE_MiB]
set -eu
. "$(dirname "$0")/lib/domain.sh"
src_mib=${1:-320}
guest=${LVWATCH_GUEST:-}
if [ -z "$guest" ]; then echo "two-hosts.sh needs two guests: tools/vmtest -guests 2 -script $0" >&2; exit 2; fi
set -- $LVWATCH_SCRATCH_DISKS
disk=$1
board=${2:?two-hosts.sh needs a second scratch disk, the flag board}
log=/tmp/lvwatch.log

# post writes one line to the flag board, through to the shared file.
post() { printf '%s\n' "$*" | dd of="$board" bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null; }
# await waits for a line starting with $1 on the flag board and prints it. Its
# buffers are dropped first: the other guest wrote the disk, not this kernel.
await() {
	i=0
	while :; do
		blockdev --flushbufs "$board"
		line=$(dd if="$board" bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
		case $line in "$1"*) echo "$line"; return 0 ;; esac
		i=$((i + 1))
		if [ $i -gt 3000 ]; then echo "guest $guest: no $1 on the flag board after 600 s" >&2; return 1; fi
		sleep 0.2
	done
}

if [ "$guest" = 1 ]; then
	lv=$(uuid)
	new_domain "$disk"
	new_image "$lv" 64m 1G
	# The VM runs on host 2: here the SPM changes the LV's metadata only.
	lvchange -q -an "$vg/$lv"
	lvwatch spm --domain "$vg" 2>"$log" &
	spm=$!
	sleep 1
	if ! kill -0 $spm 2>/dev/null; then cat "$log"; echo "the SPM did not start" >&2; exit 1; fi
	echo "SPM of $vg serving; LV $lv inactive here"
	post "READY $vg $lv"
	status=0
	await DONE || status=1
	kill $spm
	wait $spm || true
	echo "SPM log:"
	cat "$log"
	if grep -q '"level":"error"' "$log"; then echo "the SPM logged errors" >&2; status=1; fi
	echo "LV size seen by the SPM: $(lvs --noheadings --units b -o lv_size "$vg/$lv" | tr -d ' ')"
	vgchange -q -an "$vg" >/dev/null
	exit $status
fi

set -- $(await READY)
vg=$2
lv=$3
echo "domain $vg from the flag board, LV $lv"
status=0
lvchange -q -ay "$vg/inbox" "$vg/outbox" "$vg/$lv"
lvwatch agent --domain "$vg" --host-id 2 --chunk 128MiB --trigger 128MiB 2>"$log" &
agent=$!
logged $agent '"agent watching"'

convert_checked "$src_mib"
stop_agent
vgchange -q -an "$vg" >/dev/null
post DONE
exit $status
