#!/usr/bin/env bash
# migrate-test.sh - live-migrate a running guest between two QEMU processes on
# this host, again and again, while it runs a verified write loop
# (scenarios/loop.sh) on a vhost-user-blk disk. Each migration: a second
# backend and a second QEMU (-incoming) start, the source migrates to it
# (qemu/migrate.pl, through QMP), and the source QEMU and backend go away.
# The guest must see no I/O error and every round's read-back must match
# (also the rounds the destination runs, on what the source wrote).
#   --backend lsvblk   the destination's daemon is `lsvblk serve --standby`
#                      on the same volume: it takes the volume over from the
#                      source's daemon when the guest starts on it (the source
#                      flushes, writes a checkpoint, lets go of the lock and
#                      exits 0); the default
#   --backend qsd      qemu-storage-daemon, the destination's a second instance
#                      on the same raw file with locking=off: the reference
#   --migrations N     migrations, back and forth (default 3)
#   --s3               (lsvblk) the volume is kept in the Ceph cluster of
#                      ci/ceph.sh (up already), served with --flush remote, and
#                      each daemon has a directory of its own, as on two hosts:
#                      the destination's `serve --standby --store` follows the
#                      volume from the bucket and the hand-over goes through it
#                      (a daemon migrated back to clears its stale copy first)
#   --vm-args WORDS    more run-vm.sh options for every QEMU (e.g. --cpu, --tcg-thread)
#   --kernel-args WORDS  more guest kernel command line words
#   --warmup-rounds N  the first migration starts after N verified rounds (default 1)
#   --idle-switch S    the guest idles S seconds after each round and each
#                      migration starts at a round's end: no I/O in flight
#   --cached-reads S   each round also reads the loop region into the guest's
#                      page cache S seconds after announcing it and checks the
#                      cached copy S seconds later; each migration starts on
#                      the announcement and copies slowly until the read ended
#                      (QEMU 10 may switch over after its first pass anyway;
#                      the destination must get the pages the backend wrote
#                      meanwhile: its dirty log)
#   --boot-timeout S   limit for the whole guest run (default 600)
#   --progress-timeout S  guest progress needed within S seconds (default 120)
#   --summary FILE     append one result line (key=value) to FILE
#   --keep             keep the temp dir
# Per migration it prints QEMU's total time and downtime, and the disk's
# downtime: from the source's STOP to the later of the destination's RESUME
# and (lsvblk) the destination's daemon serving the volume.
# Environment: LSVBLK_BIN_DIR / LSVBLK_CARGO_PROFILE (as e2e.sh), LSVBLK_QSD.
# Logs: qemu/out/migrate-BACKEND-TIMESTAMP-PID/.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=SCRIPTDIR/host-lib.sh
. "$QEMU_DIR/host-lib.sh"

BACKEND=lsvblk MIGRATIONS=3 BOOT_TIMEOUT=600 PROGRESS_TIMEOUT=120 SUMMARY="" KEEP=0
VM_ARGS="" KERNEL_ARGS="" WARMUP_ROUNDS=1 IDLE_SWITCH=0 CACHED_READS=0 S3=0
while [ $# -gt 0 ]; do
  loop_option "$@"
  if [ "$SHIFT" -gt 0 ]; then shift "$SHIFT"; continue; fi
  case $1 in
    --migrations) MIGRATIONS=${2:?}; shift 2 ;;
    --vm-args) VM_ARGS=${2?}; shift 2 ;;
    --kernel-args) KERNEL_ARGS=${2?}; shift 2 ;;
    --warmup-rounds) WARMUP_ROUNDS=${2:?}; shift 2 ;;
    --idle-switch) IDLE_SWITCH=${2:?}; shift 2 ;;
    --cached-reads) CACHED_READS=${2:?}; shift 2 ;;
    --s3) S3=1; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
loop_check_options "$MIGRATIONS"
STORE_ARGS=() S3_URL=""
if [ "$S3" = 1 ]; then
  [ "$BACKEND" = lsvblk ] || die "--s3 is for --backend lsvblk"
  eval "$("$QEMU_DIR/../ci/ceph.sh" env)"
  "$QEMU_DIR/../ci/ceph.sh" status >/dev/null || die "--s3: the Ceph cluster is not up (ci/ceph.sh up)"
  # As the cluster's tests do: no fault test (an OSD or radosgw stopped)
  # runs meanwhile.
  exec {faults_fd}>>"$LSVBLK_CEPH_DIR.faults"
  flock -s "$faults_fd"
  S3_URL=s3://$LSVBLK_S3_BUCKET/migrate-test/$(date +%Y%m%d-%H%M%S)-$$
  STORE_ARGS=(--store "$S3_URL" --endpoint "$AWS_ENDPOINT_URL")
  LOOP_CREATE_ARGS=("${STORE_ARGS[@]}")
fi

SIZE=$((256 * 1048576))
OUT=$QEMU_DIR/out/migrate-$BACKEND-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$OUT"
TMPD=$(mktemp -d /tmp/lsvblk-migrate.XXXXXX)
declare -a VM_PIDS=() BACKEND_PIDS=()
KMS_PID=""
cleanup() {
  local rc=$? p
  trap - INT TERM
  for p in "${VM_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for p in "${BACKEND_PIDS[@]}"; do stop_pid "$p" || true; done
  if [ -n "$S3_URL" ] && [ "$KEEP" = 0 ] && command -v aws >/dev/null; then
    aws --endpoint-url "$AWS_ENDPOINT_URL" s3 rm --recursive --quiet "$S3_URL/" || true
  fi
  loop_finish "$rc"
}
loop_traps cleanup

# ---------------------------------------------------------------- setup
loop_backend_setup "$BACKEND" "$TMPD" "$OUT" "$SIZE"
if [ "$BACKEND" = lsvblk ]; then
  WHAT="lsvblk serve ($BIN_HOW), the destination's with --standby"
  [ "$S3" = 0 ] || WHAT+=", the volume in $S3_URL, a directory per daemon"
else
  WHAT="qemu-storage-daemon, the destination's with locking=off ($QSD_VERSION)"
fi

# start_backend K STANDBY(0|1): backend K on $TMPD/vhost-K.sock; sets BPID.
start_backend() {
  local k=$1 sock=$TMPD/vhost-$1.sock log=$OUT/backend-$1.log
  rm -f "$sock"
  if [ "$BACKEND" = lsvblk ]; then
    local standby=() dir=$TMPD/vol store=()
    [ "$2" = 0 ] || standby=(--standby)
    if [ "$S3" = 1 ]; then
      # As on another host: a directory of its own, the bucket shared.
      [ "$k" = 1 ] || dir=$TMPD/vol-$k
      store=("${STORE_ARGS[@]}" --flush remote)
    fi
    "$LSVBLK" serve --volume "$dir" --socket "$sock" --kms "unix:$KMS_SOCK" \
      --token-file "$TMPD/alice.token" "${standby[@]}" ${store[@]+"${store[@]}"} >"$log" 2>&1 &
  else
    local locking=""
    [ "$2" = 0 ] || locking=",locking=off"
    "$QSD" --blockdev "driver=file,node-name=file0,filename=$TMPD/disk.raw$locking" \
      --export "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1" \
      >"$log" 2>&1 &
  fi
  BPID=$!
  BACKEND_PIDS+=("$BPID")
  wait_socket "$sock" "$BPID" "$BACKEND" "$log"
}

# start_vm K [INCOMING_URI]: QEMU K on backend K's socket; sets VPID.
start_vm() {
  local k=$1 incoming=() vm_args
  [ -z "${2:-}" ] || incoming=(--incoming "$2")
  read -r -a vm_args <<<"$VM_ARGS"
  "$QEMU_DIR/run-vm.sh" --socket "$TMPD/vhost-$k.sock" --scenario loop --append "lsvblk.rounds=$ROUNDS lsvblk.gap=$IDLE_SWITCH lsvblk.cached=$CACHED_READS${KERNEL_ARGS:+ $KERNEL_ARGS}" \
    --qmp "$TMPD/qmp-$k.sock" "${incoming[@]}" "${vm_args[@]}" --log "$OUT/console-$k.log" --timeout "$BOOT_TIMEOUT" \
    >"$OUT/guest-$k.result" 2>"$OUT/guest-$k.stderr" &
  VPID=$!
  VM_PIDS+=("$VPID")
  local i
  for ((i = 0; i < 300; i++)); do
    [ -S "$TMPD/qmp-$k.sock" ] && return 0
    exited "$VPID" && die "QEMU $k exited at once ($OUT/guest-$k.stderr, $OUT/console-$k.log.stderr)"
    sleep 0.1
  done
  die "QEMU $k did not open its QMP socket in 30 s"
}

consoles() { cat "$OUT"/console-*.log 2>/dev/null | tr -d '\r'; }
rounds_done() { consoles | grep -a -c -E '^lsvblk-loop: round [0-9]+/[0-9]+ ok' || true; }
# What a migration waits for: a round's end, or (--cached-reads) the line
# before a round's page cache read.
if [ "$CACHED_READS" = 0 ]; then
  TRIGGER='^lsvblk-loop: round [0-9]+/[0-9]+ ok'
else
  TRIGGER='^lsvblk-loop: round [0-9]+: page cache read in'
fi
triggers() { consoles | grep -a -c -E "$TRIGGER" || true; }
# The guest kernel's first crash report line, if any (it may hang instead of
# powering off after one).
guest_crash() { consoles | grep -a -m1 -E 'Kernel panic|BUG: |kernel BUG at|Oops: |general protection fault' || true; }

# epoch_of_log_line LOG PATTERN: the timestamp of LOG's first line matching
# PATTERN, in seconds since the epoch ("-" if none).
epoch_of_log_line() {
  local stamp
  stamp=$(grep -a -m1 -E "$2" "$1" | awk '{ print $1 }')
  if [ -n "$stamp" ]; then date -d "$stamp" +%s.%6N; else echo -; fi
}

# field NAME: the value of NAME in $result (migrate.pl's key=value line).
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$result"; }

# log_field FILE PATTERN KEY: KEY's value on FILE's last line matching PATTERN ("-" if none).
log_field() {
  grep -a "$2" "$1" 2>/dev/null | tail -1 | sed -e 's/\x1b\[[0-9;]*m//g' |
    awk -v key="$3" '{ v = "-"; for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) v = substr($i, length(key) + 2) } END { print (NR ? v : "-") }'
}
# ms_between A B: milliseconds from epoch time A to B (decimals); "-" if either is.
ms_between() {
  if [ "$1" = - ] || [ "$2" = - ]; then echo -; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 + 0.5 }'
}

# ---------------------------------------------------------------- run
# A migration takes about two rounds (a destination started, then the next
# round ended); a few more keep the guest writing until the last one.
ROUNDS=$((2 * MIGRATIONS + 2 + WARMUP_ROUNDS))
log "backend: $WHAT; $MIGRATIONS live migrations during $ROUNDS verified rounds"
k=1
start_backend 1 0
SRC_BACKEND=$BPID
start_vm 1
SRC_VM=$VPID
wait_for_line "$OUT/console-1.log" '^lsvblk-loop: round 1/' "$PROGRESS_TIMEOUT" "$SRC_VM" ||
  die "the guest did not finish its first round within ${PROGRESS_TIMEOUT}s (console: $OUT/console-1.log)"

declare -a ROWS=() DOWN=() TOTAL=() QDOWN=()
for ((m = 1; m <= MIGRATIONS; m++)); do
  d=$((k + 1))
  start_backend "$d" 1
  DST_BACKEND=$BPID
  start_vm "$d" "unix:$TMPD/migrate-$d.sock"
  DST_VM=$VPID
  # A moment into a round: the migration lands with requests in flight.
  want=$(($(triggers) + 1))
  [ "$m" -gt 1 ] || [ "$want" -ge "$WARMUP_ROUNDS" ] || want=$WARMUP_ROUNDS
  for ((i = 0; i < PROGRESS_TIMEOUT * 20; i++)); do
    [ "$(triggers)" -ge "$want" ] && break
    crash=$(guest_crash)
    [ -z "$crash" ] || die "migration $m: the guest kernel crashed before it: $crash (console: $OUT/console-$k.log)"
    exited "$SRC_VM" && die "migration $m: the guest stopped before it (console: $OUT/console-$k.log)"
    consoles | grep -a -q '^LSVBLK-E2E: ' && die "migration $m: the guest finished its $ROUNDS rounds before it"
    sleep 0.05
  done
  [ "$(triggers)" -ge "$want" ] || die "migration $m: no guest progress for ${PROGRESS_TIMEOUT}s"
  converge=()
  if [ "$CACHED_READS" != 0 ]; then
    converge=(--converge-after "$OUT/console-$k.log" '^lsvblk-loop: round [0-9]+: page cache filled')
  elif [ "$IDLE_SWITCH" = 0 ]; then
    sleep 0.5
  fi
  result=$("$QEMU_DIR/migrate.pl" "${converge[@]}" "$TMPD/qmp-$k.sock" "$TMPD/qmp-$d.sock" "unix:$TMPD/migrate-$d.sock" "$PROGRESS_TIMEOUT" 2>"$OUT/migrate-$m.stderr") ||
    die "migration $m failed: $result $(cat "$OUT/migrate-$m.stderr")"
  echo "$result" >"$OUT/migrate-$m.result"
  stop_at=$(field stop_at) resume_at=$(field resume_at)
  ready_at=$resume_at
  if [ "$BACKEND" = lsvblk ]; then
    # The source's daemon handed the volume over and exits 0 by itself.
    wait_exit "$SRC_BACKEND" 30 || die "migration $m: the source's lsvblk did not exit after the hand-over ($OUT/backend-$k.log)"
    rc=0
    wait "$SRC_BACKEND" || rc=$?
    [ "$rc" = 0 ] || die "migration $m: the source's lsvblk exited $rc ($OUT/backend-$k.log)"
    grep -q "volume handed over to another daemon" "$OUT/backend-$k.log" ||
      die "migration $m: the source's lsvblk did not hand the volume over ($OUT/backend-$k.log)"
    wait_for_line "$OUT/backend-$d.log" 'took the volume over' 30 "$DST_BACKEND" ||
      die "migration $m: the destination's lsvblk did not take the volume over ($OUT/backend-$d.log)"
    taken_at=$(epoch_of_log_line "$OUT/backend-$d.log" 'took the volume over')
    ready_at=$(awk -v a="$resume_at" -v b="$taken_at" 'BEGIN { print (b > a) ? b : a }')
  else
    stop_pid "$SRC_BACKEND" || true
  fi
  wait "$SRC_VM" 2>/dev/null || true # quit by migrate.pl; its run-vm.sh has no result
  down_ms=$(ms_between "$stop_at" "$ready_at")
  DOWN+=("$down_ms")
  TOTAL+=("$(field total_ms)")
  QDOWN+=("$(field qemu_downtime_ms)")
  ROWS+=("$(printf '%9s %9s %12s %9s %8s' "$m" "$(field total_ms)" "$(field qemu_downtime_ms)" "$down_ms" "$(field ram_mib)")")
  echo "   migration $m: total $(field total_ms) ms, QEMU downtime $(field qemu_downtime_ms) ms, disk down ${down_ms} ms ($(field ram_mib) MiB RAM sent)"
  if [ "$BACKEND" = lsvblk ] && [ -z "$S3_URL" ]; then
    # Where the disk's downtime went, from both daemons' logs: the source's
    # early preparation (upkeep paused, heads sealed, checkpoint), its
    # hand-over (waits for the preparation; closes in full if something was
    # written after it), the destination's wait for it and its lock + open.
    prep='checkpointed ahead of the hand-over' gone='handed the volume over' took='opened it'
    echo "     breakdown: source prep $(log_field "$OUT/backend-$k.log" "$prep" ms) ms" \
      "(pause $(log_field "$OUT/backend-$k.log" "$prep" paused_ms), seal $(log_field "$OUT/backend-$k.log" "$prep" seal_ms))," \
      "hand-over close $(log_field "$OUT/backend-$k.log" "$gone" close_ms) ms;" \
      "destination waited $(log_field "$OUT/backend-$d.log" "$took" release_ms) ms, lock+open $(log_field "$OUT/backend-$d.log" "$took" lock_and_open_ms) ms;" \
      "QEMU started the destination's device $(ms_between "$resume_at" "$(epoch_of_log_line "$OUT/backend-$d.log" 'frontend starts the device')") ms after RESUME"
  fi
  k=$d SRC_BACKEND=$DST_BACKEND SRC_VM=$DST_VM
done

while ! exited "$SRC_VM"; do
  crash=$(guest_crash)
  [ -z "$crash" ] || die "the guest kernel crashed after the migrations: $crash (console: $OUT/console-$k.log)"
  sleep 0.2
done
rc=0
wait "$SRC_VM" || rc=$?
result=$(cat "$OUT/guest-$k.result")
echo "   $result"
[ "$rc" = 0 ] || die "the guest's loop did not PASS on the last destination (console: $OUT/console-$k.log)"
rc=0
stop_pid "$SRC_BACKEND" || rc=$?
[ "$rc" = 0 ] || die "the last $BACKEND exited $rc after SIGTERM ($OUT/backend-$k.log)"
if [ "$BACKEND" = lsvblk ]; then
  grep -q "volume flushed and closed" "$OUT/backend-$k.log" ||
    die "the last lsvblk did not flush and close the volume ($OUT/backend-$k.log)"
fi
VM_PIDS=() BACKEND_PIDS=()
guest_errors=$(consoles | grep -a -c -E 'I/O error, dev|blk_update_request|is not a head' || true)
[ "$guest_errors" = 0 ] || die "the guest's kernel reported $guest_errors I/O errors ($OUT/console-*.log)"
verified=$(rounds_done)
[ "$verified" = "$ROUNDS" ] || die "$verified rounds verified, $ROUNDS expected"

echo
echo "migrate-test: PASS $BACKEND, $MIGRATIONS migrations, $verified rounds verified, ${SECONDS}s"
printf '%9s %9s %12s %9s %8s\n' migration total_ms qemu_down_ms disk_down ram_mib
printf '%s\n' "${ROWS[@]}"
line="backend=$BACKEND${S3_URL:+-s3} migrations=$MIGRATIONS guest=PASS guest_io_errors=$guest_errors"
line+=" total_p50_ms=$(percentile 50 "${TOTAL[@]}") qemu_downtime_p50_ms=$(percentile 50 "${QDOWN[@]}")"
line+=" disk_down_p50_ms=$(percentile 50 "${DOWN[@]}") disk_down_max_ms=$(percentile 100 "${DOWN[@]}") wall_s=$SECONDS"
echo "$line"
[ -z "$SUMMARY" ] || echo "$line" >>"$SUMMARY"
