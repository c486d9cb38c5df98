# shellcheck shell=sh
# rootfs - boot a root file system from an lsvblk volume over a plain base
# image (busybox ash, run by /init): mounts /dev/vda (ext2, made from the
# base image) at /newroot and asks /init to switch_root into it, as a
# distro's initramfs does. The root file system's own /sbin/init
# (qemu/base/init) then runs as PID 1, does the checks of the boot's
# lsvblk.phase and prints the result line.
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

wait_disk
mkdir -p /newroot
mount -t ext2 -o ro "$DISK" /newroot || fail "mount $DISK (ext2 from the base image) failed"
[ -x /newroot/sbin/init ] || fail "the root file system has no /sbin/init"
[ -x /newroot/bin/busybox ] || fail "the root file system has no /bin/busybox"
say "root fs mounted from $DISK; switching root to its /sbin/init"
echo /newroot >/tmp/lsvblk-switch-root
