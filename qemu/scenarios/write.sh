# shellcheck shell=sh
# write - first boot of the persistence test (busybox ash, run by /init with sh -eu).
# Checks the disk size (lsvblk.sectors) and queue count (lsvblk.queues), writes
# the dd probes, the two fio regions and an ext2 filesystem with known files (see
# the layout in /lib/lsvblk-e2e.sh), then reads everything back once with the page
# cache dropped. A later boot runs "verify" against the same disk.
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

check_size
check_queues
need_layout
dd_write_all gen1
fio_write_all
fs_make
drop_caches
say "reading back before shutdown"
dd_check_all gen1
fio_check_all
fs_check
finish
