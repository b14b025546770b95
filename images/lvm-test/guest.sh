#!/bin/sh
# Runs chrooted in the LVM test VM (Debian 12 + lvm2): builds a thin pool on
# /dev/vdb with a base thin LV holding an ext4 file system and a marker file,
# then runs our Rust test (crates/cli/tests/lvm.rs, guest_roundtrip) against it.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C LVM_SUPPRESS_FD_WARNINGS=1
# No udevd in here: libdevmapper makes the /dev nodes and /dev/VG links itself.
export DM_DISABLE_UDEV=1
step() { echo "guest: $*"; }

step "lvm $(lvm version | awk '/LVM version/ { print $3 }'), thin_check $(thin_check -V)"
pvcreate -q /dev/vdb
vgcreate -q sdvg /dev/vdb
lvcreate -q --type thin-pool -L 192M -n pool sdvg
lvcreate -q -V 64M -T sdvg/pool -n base
mkfs.ext4 -q /dev/sdvg/base
mkdir -p /mnt/base
mount /dev/sdvg/base /mnt/base
echo "base marker $(date -u +%s)" >/mnt/base/marker
umount /mnt/base
step "pool sdvg/pool and base sdvg/base ready: $(grep -c dm- /proc/partitions) dm devices"

SD_LVM_GUEST_VG=sdvg SD_LVM_GUEST_POOL=pool SD_LVM_GUEST_BASE=base \
	/tmp/lvm-guest-test --ignored --exact guest_roundtrip --nocapture --test-threads=1
