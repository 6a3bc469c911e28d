#!/bin/sh
# Eight qcow2 LVs (and a ninth that reaches its maximum) written at once in the test guest (tools/vmtest -script) while
# `lvwatch agent --spm` grows them, with the agent killed -9 mid-run and started
# again: no writer may see ENOSPC. Beside them: an image whose LV reaches its
# maximum size (virtual size × 1.1) and stops there, a raw LV and the domain's
# special LVs, which are never touched.
set -eu
. "$(dirname "$0")/lib/domain.sh"
disk=${LVWATCH_SCRATCH_DISKS%% *}
log=/tmp/agent.log
fail() { echo "FAIL: $*" >&2; status=1; }
status=0
size_of() { blockdev --getsize64 "/dev/$vg/$1"; }

new_domain "$disk"
lvs=""
for i in 1 2 3 4 5 6 7 8; do
	lv=$(uuid)
	new_image "$lv" 32m 1G
	lvs="$lvs $lv"
done
small=$(uuid) # 128 MiB virtual: at most 141 MiB
new_image "$small" 32m 128M
raw=$(uuid)
lvcreate -q -Zn -Wn -L 32m -n "$raw" "$vg"
dd if=/dev/urandom of="/dev/$vg/$raw" bs=1M count=32 oflag=direct 2>/dev/null

start_agent() {
	lvwatch agent --domain "$vg" --host-id 1 --spm --chunk 128MiB --trigger 128MiB 2>>"$log" &
	agent=$!
	logged $agent '"agent watching"' "$1"
}
start_agent 1

dd if=/dev/urandom of=/tmp/src.raw bs=1M count=192 2>/dev/null
head -c $((100 << 20)) /tmp/src.raw >/tmp/small.raw
# The LVs start below the trigger: the agent extends each at once; the writers
# start once all are armed, as on a host where the LVs were made bigger than that.
i=0
until [ "$(lvwatch status --json | grep -c '"state": "\(armed\|at-maximum\)"')" -eq 9 ]; do
	i=$((i + 1)); [ $i -le 600 ] || { lvwatch status; echo "the LVs were not all armed" >&2; exit 1; }
	sleep 0.1
done
# Each writer at 4 MiB/s (-r), 32 MiB/s in all: under TCG emulation lvm runs
# some 30x slower than on a host while qemu-img's I/O does not, and unthrottled
# writers would outrun, during the restart and 8 extends in a row, any trigger
# that fits this guest's 4 GiB disk. At 8 MiB/s a writer goes from its LV's
# threshold to its end (128 MiB) in 16 s, and on a loaded machine the 8 extends
# queued after the restart took longer than that.
pids=""
for lv in $lvs; do
	qemu-img convert -r 4M -n -t none -O qcow2 /tmp/src.raw "/dev/$vg/$lv" 2>"/tmp/$lv.err" &
	pids="$pids $!"
done
qemu-img convert -r 4M -n -t none -O qcow2 /tmp/small.raw "/dev/$vg/$small" 2>"/tmp/$small.err" &
pids="$pids $!"
sleep 3
kill -9 $agent
wait $agent 2>/dev/null || true
echo "agent killed -9 with the writers running; starting it again"
start_agent 2
n=0
for p in $pids; do wait $p || n=$((n + 1)); done
[ $n -eq 0 ] || { cat /tmp/*.err; fail "$n of 9 qemu-img convert failed"; }
grep -il 'space' /tmp/*.err && fail "a writer saw ENOSPC"
for lv in $lvs; do
	qemu-img check -q "/dev/$vg/$lv" || fail "qemu-img check $lv"
	qemu-img compare -q /tmp/src.raw "/dev/$vg/$lv" || fail "qemu-img compare $lv"
done
qemu-img check -q "/dev/$vg/$small" || fail "qemu-img check $small"
qemu-img compare -q /tmp/small.raw "/dev/$vg/$small" || fail "qemu-img compare $small"
echo "8 writers of 192 MiB and one of 100 MiB: done, images checked and compared to their sources"

lvwatch status
lvwatch status --json >/tmp/status.json
kill $agent
wait $agent || true
[ "$(size_of "$small")" -eq $((141 << 20)) ] || fail "the 128 MiB image's LV is $(size_of "$small") bytes, want its maximum of 141 MiB"
grep -q '"state": "at-maximum"' /tmp/status.json || fail "no LV at its maximum in the status"
[ "$(size_of "$raw")" -eq $((32 << 20)) ] || fail "the raw LV was resized"
grep -q "$raw" /tmp/status.json && fail "the raw LV is watched"
for mb in inbox outbox; do [ "$(size_of $mb)" -eq $((8 << 20)) ] || fail "$mb was resized"; done
grep -q '"level":"error"' "$log" && { grep '"level":"error"' "$log"; fail "errors in the agent's log"; }
echo "extensions: $(grep -c '"LV extended"' "$log")"
vgchange -q -an "$vg" >/dev/null
exit $status
