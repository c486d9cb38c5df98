# shellcheck shell=bash disable=SC2034
# common.sh - shared settings for the qemu/ guest tooling; sourced, not run.
#
# Usage (from another qemu/*.sh script):
#   . "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Environment:
#   LSVBLK_QEMU_CACHE  where downloads and build products live
#                      (default: qemu/.cache next to this file; gitignored)

QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LSVBLK_QEMU_CACHE:-$QEMU_DIR/.cache}

# Private QEMU root (qemu-system-x86 unpacked, never installed: installing it
# would remove qemu-utils 10 / qemu-storage-daemon, see README).
# LSVBLK_QEMU picks the QEMU: 7.2 (Debian 12's, the default) or 10 (Debian 12's
# backports, the same release as the qemu-storage-daemon here). Live migrations
# with requests in flight need 10: 7.2's TCG loses guest stores during a
# migration (README.md, "Live migration under TCG").
QEMU_SERIES=${LSVBLK_QEMU:-7.2}
case $QEMU_SERIES in
  7.2) QEMU_ROOT=$CACHE/qemu-root ;;
  10) QEMU_ROOT=$CACHE/qemu10-root ;;
  *) printf 'LSVBLK_QEMU must be 7.2 or 10, not %s\n' "$QEMU_SERIES" >&2; exit 2 ;;
esac
QEMU_BIN=$QEMU_ROOT/usr/bin/qemu-system-x86_64
QEMU_MODDIR=$QEMU_ROOT/usr/lib/x86_64-linux-gnu/qemu

KERNEL_DIR=$CACHE/kernel          # vmlinuz, modules/*.ko, VERSION
BUSYBOX=$CACHE/busybox/busybox    # static busybox
FIO_DIR=$CACHE/fio                # bin/fio, lib/* (every ldd dependency), VERSION
INITRD=$CACHE/initrd.gz
INITRD_PROBE=$CACHE/initrd-probe.gz # busybox + /init + probe scenario only

# Kernel modules the guest needs, in insmod order (there is no modules.dep
# in the initramfs; build-initramfs.sh checks that every module's depends=
# come earlier in this list).
GUEST_MODULES=(
  virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
  loop crc16 mbcache jbd2 crc32c_generic ext4
)

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }
