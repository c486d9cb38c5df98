# shellcheck shell=sh
# readonly - read back what "write" put on the disk, on a read-only export
# (busybox ash, run by /init). Never writes: checks the disk size and queue
# count, that the guest sees the device read-only (/sys/block/vda/ro = 1, the
# backend offered VIRTIO_BLK_F_RO) and that a write to it is refused,
# then the dd probes and the ext2 files (mounted read-only). Skips the fio
# regions (fio opens its file for writing).
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

check_size
check_queues
need_layout
ro=$(cat /sys/block/vda/ro)
[ "$ro" = 1 ] || fail "device is writable (/sys/block/vda/ro=$ro), expected a read-only export"
# A write attempt (4k O_DIRECT, at 48 MiB: outside every area of the layout)
# must fail. The guest kernel itself refuses it (EPERM) because the backend
# offered VIRTIO_BLK_F_RO, so nothing reaches the device.
if dd if=/dev/zero of="$DISK" bs=4096 seek=$((48 * 256)) count=1 oflag=direct conv=notrunc 2>/tmp/dd.err; then
  fail "a write to the read-only disk succeeded"
fi
say "read-only ok: ro=1, a write was refused: $(grep -m1 -v 'records' /tmp/dd.err || tail -n1 /tmp/dd.err)"
dd_check_all gen1
fs_check
finish
