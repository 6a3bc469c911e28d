#!/bin/sh
# vmtest: -qemu -disks 2
# A paused VM's whole story, in the test guest (tools/vmtest -script -qemu): a VM
# (internal/testvm's, under a nested QEMU) writes more than its LV and its VG
# hold; its LV's extension waits in the SPM for want of space and QEMU pauses
# the VM on ENOSPC; an operator adds a PV (vgextend); the SPM serves the request
# it kept, the agent refreshes the LV and resumes the VM by itself; the VM
# finishes with every drive's data read back intact.
# Usage: sh vm-resume.sh [DATA_MiB]   (scratch disks: the VG's, then the new PV)
set -eu
. "$(dirname "$0")/lib/domain.sh"
data_mib=${1:-96}
set -- $LVWATCH_SCRATCH_DISKS
disk=$1 newpv=$2
lv=$(uuid)
log=/tmp/agent.log out=/tmp/testvm.out console=/tmp/console.log
mkdir -p /run/vms
qmp=/run/vms/testvm.qmp
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
begin=$(now)
ip link set lo up # for the agent's metrics

# wait_for WHAT FILE PATTERN SECONDS: until FILE has PATTERN, while the agent and the VM run.
wait_for() {
	i=0
	until grep -q "$3" "$2"; do
		i=$((i + 1))
		if [ $i -gt $(($4 * 10)) ] || ! kill -0 "$agent" 2>/dev/null || ! kill -0 "$vm" 2>/dev/null; then
			echo "FAIL: no $1 after $4 s (agent or VM gone?)"
			echo "--- agent log"; cat "$log"; echo "--- testvm"; cat "$out"; echo "--- console"; cat "$console"
			exit 1
		fi
		sleep 0.1
	done
}

# A VG with a 64 MiB LV holding a 1 GiB qcow2 image, and less free space than one chunk.
new_domain "$disk"
new_image "$lv" 64m 1G
free=$(vgs --noheadings -o vg_free_count "$vg" | tr -d ' ')
lvcreate -q -Zn -Wn -l $((free - 16)) -n filler "$vg"
echo "VG $vg: $(vgs --noheadings --units m -o vg_free "$vg" | tr -d ' ') free, LV $lv of 64 MiB; the VM writes ${data_mib} MiB"

lvwatch agent --domain "$vg" --host-id 1 --spm --chunk 32MiB --trigger 16MiB \
	--qmp '/run/vms/*.qmp' --metrics 127.0.0.1:9753 2>"$log" &
agent=$!
vm=$agent
wait_for "agent start" "$log" '"agent watching"' 30

booted=$(now)
testvm run --kit "$LVWATCH_TESTVM_KIT" --machine microvm --drive "/dev/$vg/$lv,werror=stop" \
	--data-mib "$data_mib" --qmp "$qmp" --console "$console" >"$out" 2>&1 &
vm=$!
wait_for "pause of the VM" "$out" 'event STOP' 900
echo "the VM paused $(since "$booted" "$(now)") s after its start: $(grep -m1 'event BLOCK_IO_ERROR' "$out" | sed 's/^testvm: event //')"
# The agent's request stands in the SPM: after 30 s the volume says waiting,
# and the agent looks at its VMs, as an operator would see in lvwatch status
# before adding a LUN.
wait_for "waiting volume" "$log" '"state":"waiting"' 90
lvwatch status

pvcreate -q "$newpv"
t0=$(now)
vgextend -q "$vg" "$newpv"
t1=$(now)
echo "vgextend $newpv took $(since "$t0" "$t1") s"

status=0
i=0
until grep -q 'event RESUME' "$out"; do
	i=$((i + 1))
	if [ $i -gt 1200 ] || ! kill -0 "$vm" 2>/dev/null; then
		echo "FAIL: the VM is not running again 120 s after vgextend"
		lvwatch status
		echo "--- the agent's looks at VMs"
		grep '"message":"VM' "$log" || true
		echo "--- lvwatch resume, as an operator would: what the logic says now"
		lvwatch resume --qmp "$qmp" "/dev/$vg/$lv" || true
		kill "$vm" 2>/dev/null || true
		status=1
		break
	fi
	sleep 0.1
done
vmstatus=0
wait "$vm" || vmstatus=$?
[ $vmstatus -eq 0 ] || status=1
vm=$agent
echo "--- testvm (exit $vmstatus)"
cat "$out"
resumed=$(sed -n 's/.*event RESUME at .* (uptime \(.*\))$/\1/p' "$out" | head -1)
stops=$(grep -c 'event STOP' "$out" || true) resumes=$(grep -c 'event RESUME' "$out" || true)
if [ -n "$resumed" ]; then
	vgextend_to_running=$(since "$t0" "$resumed")
	echo "vgextend -> the VM running again: $vgextend_to_running s (uptime $t0 -> $resumed)"
else
	echo "FAIL: the VM never resumed"
	status=1
fi
if [ "$stops" != "$resumes" ]; then echo "FAIL: $stops pauses, $resumes resumes"; status=1; fi
echo "--- the agent's extensions and resumes"
grep -E '"LV extended"|"action":"resumed"|"state":"waiting"|"level":"(warn|error)"' "$log" |
	sed 's/"level":"\([a-z]*\)",//; s/"component":"[a-z]*",//'
grep -q '"action":"resumed"' "$log" || { echo "FAIL: the agent logged no resume"; status=1; }
if grep -q '"level":"error"' "$log"; then status=1; fi
wget -q -O - http://127.0.0.1:9753/metrics | grep -E '^lvwatch_vm_(resume_seconds_(sum|count)|resumes_total|pauses_total)' >/tmp/metrics || true
cat /tmp/metrics
awk '/^lvwatch_vm_resume_seconds_sum/ { s = $2 } /^lvwatch_vm_resume_seconds_count/ { n = $2 }
	END { if (n > 0) printf "the new table live -> the VM running (lvwatch_vm_resume_seconds): %.1f ms on average of %d\n", s * 1000 / n, n }' /tmp/metrics
lvwatch status
kill "$agent"
wait "$agent" || true
vgchange -q -an "$vg" >/dev/null
echo "scenario: exit $status in $(since "$begin" "$(now)") s; the VM: $(sed -n 's/^testvm: the guest is up after \(.*\) (uptime.*/up after \1/p' "$out"), $stops pause(s), vgextend -> running ${vgextend_to_running:-never} s"
exit $status
