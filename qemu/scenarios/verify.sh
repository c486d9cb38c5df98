# shellcheck shell=sh
# verify - second boot of the persistence test (busybox ash, run by /init).
# Checks that everything "write" put on the disk is still there: disk size, the
# dd probes, the fio overwrite region (no stale pass-A block), the fio random
# region, and the ext2 files. Reports every failed check, not just the first.
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

check_size
check_queues
need_layout
dd_check_all gen1
fio_check_all
fs_check
finish
