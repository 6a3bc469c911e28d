#!/bin/sh
# A real qcow2 writer on a thin LV, in the test guest (tools/vmtest -script):
# qemu-img converts incompressible data, several times the LV's first size, onto
# a 64 MiB LV with cache=none while `lvwatch agent --spm` grows it. The convert
# must finish with no error (no ENOSPC), the image must check clean and compare
# equal to its source, and every extension is printed with its phases.
# Usage: sh qemu-img.sh [SOURCE_MiB]   (on the guest's first scratch disk)
set -eu
src_mib=${1:-320}
. "$(dirname "$0")/lib/domain.sh"
disk=${LVWATCH_SCRATCH_DISKS%% *}
lv=$(uuid)
log=/tmp/agent.log

new_domain "$disk"
new_image "$lv" 64m 1G

lvwatch agent --domain "$vg" --host-id 1 --spm --chunk 128MiB --trigger 128MiB 2>"$log" &
agent=$!
logged $agent '"agent watching"'

status=0
convert_checked "$src_mib"
stop_agent
vgchange -q -an "$vg" >/dev/null
exit $status
