# shellcheck shell=sh
# loop - a verified write loop for the restart and migration tests (busybox ash,
# run by /init). The host restarts or migrates the backend while it runs.
#
# lsvblk.rounds=N rounds (default 12); each round writes the loop region
# [144, 176 MiB) with 16k O_DIRECT writes, 16 in flight (libaio), every block
# tagged with the round and its offset ("LSVBLK-L<round>"%o), then reads all of
# it back and checks it (fio's inline verify). A write the device acknowledged
# and then lost reads back as an older round's pattern: the round fails. After
# each round the console shows "lsvblk-loop: round K/N ok", which the host
# waits for. With lsvblk.gap=S the guest then idles S seconds (no I/O) before
# the next round. With lsvblk.cached=S each round then also reads the region
# into the page cache S seconds after announcing it (buffered: the device
# writes the data into page cache pages), waits S seconds and checks the
# cached copy without touching the disk: a live migration in between must
# carry those pages over (the backend's dirty-page log), or the check finds
# an older round's data. At the
# end the kernel log must show no I/O error.
# shellcheck source=SCRIPTDIR/../guest/e2e-lib.sh
. /lib/lsvblk-e2e.sh

LOOP_OFF=$((144 * MIB))
LOOP_SIZE=$((32 * MIB))
rounds=${LSVBLK_ROUNDS:-12}
case $rounds in *[!0-9]* | "") fail "bad lsvblk.rounds=$rounds" ;; esac
gap=${LSVBLK_GAP:-0}
case $gap in *[!0-9]* | "") fail "bad lsvblk.gap=$gap" ;; esac
cached=${LSVBLK_CACHED:-0}
case $cached in *[!0-9]* | "") fail "bad lsvblk.cached=$cached" ;; esac

check_size
check_queues
[ "$SECTORS" -ge $(((LOOP_OFF + LOOP_SIZE) / 512)) ] ||
  fail "disk too small for the loop: $SECTORS sectors, need >= $(((LOOP_OFF + LOOP_SIZE) / 512))"

r=1
while [ "$r" -le "$rounds" ]; do
  tag=$(printf 'LSVBLK-L%03d' "$r")
  fio_run "loop-$r" --ioengine=libaio --iodepth=16 --rw=randwrite --bs=16k \
    --offset="$LOOP_OFF" --size="$LOOP_SIZE" --randseed="$r" \
    --verify=pattern --verify_pattern="\"$tag\"%o" --do_verify=1 ||
    fail "round $r: fio write+verify failed: $(grep -m1 -iE 'verify|error' "$FIO_LOG")"
  if [ "$cached" != 0 ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
    # Guest RAM keeps changing until the check (a tmpfs file rewritten): a
    # QEMU that switches over as soon as nothing is left to copy (10 does)
    # must wait for the host's go instead, after the read below.
    rm -f /tmp/cached-done
    (while [ ! -e /tmp/cached-done ]; do
      dd if=/dev/zero of=/tmp/cached-dirty bs=64k count=16 2>/dev/null
    done) &
    dirtier=$!
    # The host starts a migration on this line; the read comes S seconds
    # later, while QEMU's first pass over the RAM is under way: pages that
    # pass sent before the read filled them go again only through the
    # backend's dirty log.
    echo "lsvblk-loop: round $r: page cache read in $cached s"
    sleep "$cached"
    dd if="$DISK" of=/dev/null bs=1M skip=$((LOOP_OFF / MIB)) count=$((LOOP_SIZE / MIB)) 2>/dev/null ||
      fail "round $r: buffered read failed"
    echo "lsvblk-loop: round $r: page cache filled"
    sleep "$cached"
    # From the page cache: no invalidation, no O_DIRECT.
    fio_run "cached-$r" --direct=0 --invalidate=0 --rw=randwrite --bs=16k \
      --offset="$LOOP_OFF" --size="$LOOP_SIZE" --randseed="$r" \
      --verify=pattern --verify_pattern="\"$tag\"%o" --verify_only ||
      fail "round $r: the page cache copy changed: $(grep -m1 -iE 'verify|error' "$FIO_LOG")"
    touch /tmp/cached-done
    wait "$dirtier"
  fi
  echo "lsvblk-loop: round $r/$rounds ok"
  [ "$gap" = 0 ] || sleep "$gap"
  r=$((r + 1))
done

errors=$(dmesg | grep -ciE 'i/o error|blk_update_request|is not a head|critical' || true)
[ "$errors" = 0 ] || fail "kernel log shows $errors I/O errors: $(dmesg | grep -m1 -iE 'i/o error|blk_update_request|is not a head|critical')"
say "loop: $rounds rounds written and verified, kernel log clean"
