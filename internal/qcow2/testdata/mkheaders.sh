#!/bin/sh
# Remakes the *.hdr files: the first 4096 bytes of images made by qemu-img (qemu-utils).
# The tests read only the .hdr files; they never run qemu-img.
set -eu
out=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
mk() { # name, then qemu-img create's arguments after -f qcow2
	name=$1
	shift
	qemu-img create -q -f qcow2 "$@"
	head -c 4096 img >"$out/$name.hdr"
	rm -f img
}
mk v3-1G -o compat=1.1 img 1G
mk v3-4T -o compat=1.1 img 4T
mk v3-1e9 -o compat=1.1 img 1000000000 # not a power of two
mk v3-2M-clusters -o compat=1.1,cluster_size=2M img 10G
mk v3-512-clusters -o compat=1.1,cluster_size=512 img 1G
mk v3-extended-l2 -o compat=1.1,extended_l2=on img 8G
mk v3-zstd -o compat=1.1,compression_type=zstd img 8G
mk v3-luks --object secret,id=sec0,data=lvwatch -o compat=1.1,encrypt.format=luks,encrypt.key-secret=sec0 img 1G
mk v2-1G -o compat=0.10 img 1G
mk v2-100M -o compat=0.10 img 100M
# A backing file named relatively, so that no path of this machine is recorded.
qemu-img create -q -f qcow2 -o compat=1.1 base.qcow2 20G
mk v3-backing -o compat=1.1 -b base.qcow2 -F qcow2 img
