#!/usr/bin/env bash
# Installs the Debian packages lvwatch's build, tests and demo need, only those missing,
# so that `make test` and `make demo` work on a fresh Debian 12 machine.
set -euo pipefail

packages=(
	clang-19 llvm-19 libbpf-dev  # make generate: the pinned BPF compiler and libbpf headers
	bpftool                      # inspecting pinned objects
	lvm2                         # LVM2 on loop devices
	e2fsprogs                    # mkfs.ext4: a file system the signature probe must recognise
	qemu-utils                   # qemu-img / qemu-io: the real qcow2 writer
	qemu-system-x86 busybox-static cpio kmod  # tools/vmtest: a real kernel with device-mapper (cpio: its archive test)
	systemd                      # systemd-analyze: cmd/lvwatch's TestDeployUnit verifies deploy/lvwatch.service
	libvirt-daemon-system libvirt-daemon-driver-qemu  # internal/resume's libvirt test: libvirtd and its qemu driver (and user)
	linux-perf                   # perf: internal/watch checks perf still counts block_bio_queue with lvwatch attached, and profiles the probe's cost
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
	exit 1
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
