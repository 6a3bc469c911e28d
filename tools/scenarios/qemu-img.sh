#!/bin/sh
# A real qcow2 writer on a thin LV, in the test guest (tools/vmtest -script):
# qemu-img converts incompressible data, several times the LV's first size, onto
# a 64 MiB LV with cache=none while `lvwatch agent --spm` grows it. The convert
# must finish with no error (no ENOSPC), the image must check clean and compare
# equal to its source, and every extension is printed with its phases.
# Usage: sh qemu-img.sh [SOURCE_MiB]   (on the guest's first scratch disk)
set -eu
src_mib=${1:-320}
disk=${LVWATCH_SCRATCH_DISKS%% *}
vg=$(cat /proc/sys/kernel/random/uuid)
lv=$(cat /proc/sys/kernel/random/uuid)
log=/tmp/agent.log

pvcreate -q "$disk"
vgcreate -q -s 1m "$vg" "$disk"
for mb in inbox outbox; do lvcreate -q -Zn -Wn -L 8m -n "$mb" "$vg"; done
lvwatch mailbox init --inbox "/dev/$vg/inbox" --outbox "/dev/$vg/outbox"
lvcreate -q -Zn -Wn -L 64m -n "$lv" "$vg"
qemu-img create -q -f qcow2 "/dev/$vg/$lv" 1G

lvwatch agent --domain "$vg" --host-id 1 --spm --chunk 128MiB --trigger 128MiB 2>"$log" &
agent=$!
i=0
until grep -q '"agent watching"' "$log"; do
	i=$((i + 1))
	if [ $i -gt 300 ] || ! kill -0 $agent 2>/dev/null; then cat "$log"; echo "the agent did not start" >&2; exit 1; fi
	sleep 0.1
done

dd if=/dev/urandom of=/tmp/src.raw bs=1M count="$src_mib" 2>/dev/null
start=$(date +%s)
status=0
qemu-img convert -n -t none -O qcow2 /tmp/src.raw "/dev/$vg/$lv" || status=$?
echo "qemu-img convert of ${src_mib} MiB: exit $status in $(( $(date +%s) - start )) s"
qemu-img check -q "/dev/$vg/$lv" && echo "qemu-img check: clean" || status=1
qemu-img compare -q /tmp/src.raw "/dev/$vg/$lv" && echo "qemu-img compare: equal to the source" || status=1

lvwatch status
kill $agent
wait $agent || true
grep '"LV extended"' "$log" | sed 's/.*"from":"\([^"]*\)","to":"\([^"]*\)",\(.*\),"past_again.*/extended \1 -> \2: \3/'
echo "extensions: $(grep -c '"LV extended"' "$log"), final size: $(blockdev --getsize64 "/dev/$vg/$lv") bytes"
if grep -q '"level":"error"' "$log"; then grep '"level":"error"' "$log"; status=1; fi
vgchange -q -an "$vg" >/dev/null
exit $status
