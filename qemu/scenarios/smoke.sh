# shellcheck shell=sh
# smoke - quick check (busybox ash, run by /init): disk size and queue count,
# then write 1 MiB of pattern at the start and 64 KiB at the end of the disk
# (4k O_DIRECT writes) and read it back with the page cache dropped. With
# several CPUs and queues, also runs one fio job per CPU (pinned) so every
# virtqueue carries I/O. Destroys the data in those areas.
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

check_size
check_queues
[ "$SECTORS" -ge 4096 ] || fail "disk too small for smoke: $SECTORS sectors, need >= 4096 (2 MiB)"
for spec in "0 2048" "$((SECTORS - 128)) 128"; do
  # shellcheck disable=SC2086 # split "LBA COUNT"
  set -- $spec
  pattern "$1" "$2" smok >/tmp/pat
  dd if=/tmp/pat of="$DISK" bs=4096 seek=$(($1 / 8)) count=$(($2 / 8)) oflag=direct conv=notrunc 2>/tmp/dd.err ||
    fail "dd write at lba $1: $(tail -n1 /tmp/dd.err)"
done
drop_caches
for spec in "0 2048" "$((SECTORS - 128)) 128"; do
  # shellcheck disable=SC2086 # split "LBA COUNT"
  set -- $spec
  want=$(pattern "$1" "$2" smok | sha256sum | cut -d' ' -f1)
  have=$(dd if="$DISK" bs=512 skip="$1" count="$2" 2>/dev/null | sha256sum | cut -d' ' -f1)
  [ "$have" = "$want" ] || fail "read-back mismatch at lba $1+$2"
done
say "write/read-back ok (1 MiB at lba 0, 64 KiB at the end)"

cpus=$(nproc)
hwq=$(hw_queues)
if [ "$cpus" -gt 1 ] && [ "$hwq" -gt 1 ]; then
  [ "$SECTORS" -ge $((8 * 2048)) ] || fail "disk too small for the multi-queue check"
  fio_run mq --rw=randwrite --bs=4k --offset=$((2 * MIB)) --size=$((2 * MIB)) --numjobs="$cpus" \
    --offset_increment=$((2 * MIB)) --cpus_allowed=0-$((cpus - 1)) --cpus_allowed_policy=split \
    --verify=pattern --verify_pattern='"LSVBLK-Q"%o' --do_verify=1 --group_reporting ||
    fail "fio multi-queue job failed"
  # Every virtqueue must have carried requests: count the completion
  # interrupts of each request queue (MSI-X vectors "virtioN-req.K").
  used=0
  queues=0
  while read -r name count; do
    say "  $name: $count interrupts"
    queues=$((queues + 1))
    if [ "$count" -gt 0 ]; then used=$((used + 1)); fi
  done <<EOF
$(awk '$NF ~ /^virtio[0-9]+-req\.[0-9]+$/ { s = 0; for (i = 2; i <= NF; i++) { if ($i ~ /^[0-9]+$/) s += $i; else break } print $NF, s }' /proc/interrupts)
EOF
  [ "$queues" -ge "$hwq" ] || fail "found $queues virtio request queue interrupts in /proc/interrupts, expected $hwq"
  [ "$used" -ge "$hwq" ] || fail "only $used of $queues virtqueues carried I/O"
  say "multi-queue ok: all $queues virtqueues carried I/O"
fi
