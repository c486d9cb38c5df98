# shellcheck shell=sh
# rootfs - a root file system on an lsvblk volume over a plain base image
# (busybox ash, run by /init): mounts /dev/vda (ext2, made from the base
# image), runs the root file system's own busybox in a chroot, and checks
# what it holds. lsvblk.phase says which boot this is:
#   first    - the base's files are there and the guest's marker is not;
#              writes the marker (a file of 2 MiB plus a line in /etc)
#   again    - after a reboot: the marker and the base's files are there
#   pristine - a second volume on the same base: the base's files, no marker
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

wait_disk
mkdir -p /root
mount -t ext2 "$DISK" /root || fail "mount $DISK (ext2 from the base image) failed"
release=$(chroot /root /bin/busybox cat /etc/base-release) || fail "chroot into the root file system failed"
[ "$release" = "lsvblk base image v1" ] || fail "base-release reads '$release'"
say "root fs: base-release '$release', read through the root fs's own busybox"
marker=/root/var/guest-marker
case ${LSVBLK_PHASE:-} in
  first)
    [ ! -e "$marker" ] || fail "a fresh volume already has the guest's marker"
    # The root fs has no /dev and no applet links: every command is its
    # busybox by path.
    chroot /root /bin/busybox sh -c 'echo "written by the guest" >/var/guest-marker &&
      echo "guest-was-here" >>/etc/base-release.d &&
      /bin/busybox yes G | /bin/busybox tr -d "\n" | /bin/busybox head -c 2097152 >/var/guest-blob' ||
      fail "writing in the chroot failed"
    sync
    say "marker written"
    ;;
  again)
    [ "$(cat "$marker" 2>/dev/null)" = "written by the guest" ] || fail "the marker is gone after a reboot"
    grep -q guest-was-here /root/etc/base-release.d || fail "the line in /etc is gone after a reboot"
    [ "$(wc -c </root/var/guest-blob)" = 2097152 ] || fail "the 2 MiB file's size changed after a reboot"
    [ "$(tr -d G </root/var/guest-blob | wc -c)" = 0 ] || fail "the 2 MiB file's bytes changed after a reboot"
    say "marker, /etc line and 2 MiB file still there after a reboot"
    ;;
  pristine)
    [ ! -e "$marker" ] || fail "a second volume on the base sees the first one's marker"
    [ ! -e /root/etc/base-release.d ] || fail "a second volume on the base sees the first one's /etc change"
    say "pristine base: no marker"
    ;;
  *) fail "lsvblk.phase must be first, again or pristine (got '${LSVBLK_PHASE:-}')" ;;
esac
umount /root || fail "umount failed"
