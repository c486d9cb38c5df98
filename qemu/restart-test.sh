#!/usr/bin/env bash
# restart-test.sh - restart a guest's disk backend again and again while the
# guest runs a verified write loop (scenarios/loop.sh), as an operator
# upgrading or recovering the daemon would. QEMU reconnects by itself
# (reconnect=1 on the chardev). The guest must see no I/O error, every
# round's read-back must match what it wrote (an acknowledged write lost by a
# restart reads back as an older round's pattern), and the loop must finish.
#   --backend lsvblk   lsvblk serve on a 256 MiB encrypted volume (keys from a
#                      local lsvkms), the default
#   --backend qsd      qemu-storage-daemon on a 256 MiB raw file: the reference
#   --mode kill        kill -9 the backend (default); term: SIGTERM (lsvblk must
#                      then exit 0 having flushed and closed the volume)
#   --restarts N       restarts (default 10)
#   --hold-every K     lsvblk, kill mode: every K-th restart (default 3; 0 = none)
#                      kills a daemon that holds one request back while later
#                      ones complete (TEST-ONLY hook LSVBLK_TEST_HOLD_REQUEST), so
#                      the kill lands with completions out of order; the next
#                      daemon must finish the held request from QEMU's inflight area
#   --boot-timeout S   limit for the guest (default 600)
#   --progress-timeout S  a restart must be followed by guest progress within S
#                      seconds (default 120), else the guest's I/O hung: FAIL
#   --summary FILE     append one result line (key=value) to FILE
#   --keep             keep the temp dir
# Per restart it prints the time from the signal to the new backend's socket
# ("down"), to QEMU's reconnection (lsvblk only: its log says so), and how
# many requests the new daemon resubmitted. Exit 0 = all as required.
# Environment: LSVBLK_BIN_DIR / LSVBLK_CARGO_PROFILE (as e2e.sh), LSVBLK_QSD.
# Logs: qemu/out/restart-BACKEND-MODE-TIMESTAMP-PID/.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=SCRIPTDIR/host-lib.sh
. "$QEMU_DIR/host-lib.sh"

BACKEND=lsvblk MODE=kill RESTARTS=10 HOLD_EVERY=3 BOOT_TIMEOUT=600 PROGRESS_TIMEOUT=120 SUMMARY="" KEEP=0
while [ $# -gt 0 ]; do
  loop_option "$@"
  if [ "$SHIFT" -gt 0 ]; then shift "$SHIFT"; continue; fi
  case $1 in
    --mode) MODE=${2:?}; shift 2 ;;
    --restarts) RESTARTS=${2:?}; shift 2 ;;
    --hold-every) HOLD_EVERY=${2:?}; shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
loop_check_options "$RESTARTS" "$HOLD_EVERY"
case $MODE in kill | term) ;; *) die "--mode must be kill or term" ;; esac
[ "$BACKEND" = lsvblk ] && [ "$MODE" = kill ] || HOLD_EVERY=0

SIZE=$((256 * 1048576))
OUT=$QEMU_DIR/out/restart-$BACKEND-$MODE-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$OUT"
TMPD=$(mktemp -d /tmp/lsvblk-restart.XXXXXX)
SOCK=$TMPD/vhost-user-blk.sock
VM_PID="" BACKEND_PID="" KMS_PID=""
cleanup() {
  local rc=$?
  trap - INT TERM
  if [ -n "$VM_PID" ]; then kill -TERM "$VM_PID" 2>/dev/null || true; wait "$VM_PID" 2>/dev/null || true; fi
  if [ -n "$BACKEND_PID" ]; then stop_pid "$BACKEND_PID" || true; fi
  loop_finish "$rc"
}
loop_traps cleanup

# ---------------------------------------------------------------- setup
loop_backend_setup "$BACKEND" "$TMPD" "$OUT" "$SIZE"
if [ "$BACKEND" = lsvblk ]; then
  WHAT="lsvblk serve ($BIN_HOW)"
else
  WHAT="qemu-storage-daemon $QSD_VERSION"
fi

# is_hold K: true if restart K kills a daemon holding a request back.
is_hold() { [ "$HOLD_EVERY" -gt 0 ] && [ $(($1 % HOLD_EVERY)) = 0 ]; }

n=0
# start_backend HOLD(0|1): starts backend instance n+1 on $SOCK; sets BACKEND_PID, BLOG.
start_backend() {
  n=$((n + 1))
  BLOG=$OUT/backend-$n.log
  rm -f "$SOCK"
  if [ "$BACKEND" = lsvblk ]; then
    local hook=()
    [ "$1" = 0 ] || hook=(env LSVBLK_TEST_HOLD_REQUEST=64)
    "${hook[@]}" "$LSVBLK" serve --volume "$TMPD/vol" --socket "$SOCK" --kms "unix:$KMS_SOCK" \
      --token-file "$TMPD/alice.token" >"$BLOG" 2>&1 &
  else
    "$QSD" --blockdev "driver=file,node-name=file0,filename=$TMPD/disk.raw" \
      --export "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=1" \
      >"$BLOG" 2>&1 &
  fi
  BACKEND_PID=$!
  wait_socket "$SOCK" "$BACKEND_PID" "$BACKEND" "$BLOG"
}

# stalled WHAT: the guest stopped making progress; show why it might have.
stalled() {
  log "the guest's last console lines:"
  tr -d '\r' <"$OUT/console.log" | tail -n 6 | sed 's/^/  | /' >&2
  die "$1: the guest's I/O stalled (console: $OUT/console.log)"
}

rounds_done() { tr -d '\r' <"$OUT/console.log" 2>/dev/null | grep -a -c -E '^lsvblk-loop: round [0-9]+/[0-9]+ ok' || true; }

# ---------------------------------------------------------------- run
log "backend: $WHAT; $RESTARTS restarts by $MODE$([ "$HOLD_EVERY" = 0 ] || echo ", every ${HOLD_EVERY}th with a request held back")"
hold_next=0
is_hold 1 && hold_next=1
start_backend "$hold_next"
"$QEMU_DIR/run-vm.sh" --socket "$SOCK" --scenario loop --append "lsvblk.rounds=$((RESTARTS + 2))" \
  --reconnect 1 --log "$OUT/console.log" --timeout "$BOOT_TIMEOUT" >"$OUT/guest.result" 2>"$OUT/guest.stderr" &
VM_PID=$!
# The guest is up and writing (a first restart that holds a request back
# waits for the hook instead: the round cannot end while it holds).
[ "$hold_next" = 1 ] || wait_for_line "$OUT/console.log" '^lsvblk-loop: round 1/' "$PROGRESS_TIMEOUT" "$VM_PID" ||
  die "the guest did not finish its first round within ${PROGRESS_TIMEOUT}s (console: $OUT/console.log)"

declare -a ROWS=() DOWN=() RECONNECT=()
holds=0
for ((k = 1; k <= RESTARTS; k++)); do
  held=$hold_next
  if [ "$held" = 1 ]; then
    wait_for_line "$BLOG" 'later requests completed while the held one waits' "$PROGRESS_TIMEOUT" "$VM_PID" ||
      stalled "restart $k: in ${PROGRESS_TIMEOUT}s the daemon did not get to hold a request while later ones complete (log: $BLOG)"
    holds=$((holds + 1))
  else
    # After the guest's next completed round, a moment into the next one:
    # the signal lands with requests in flight.
    want=$(($(rounds_done) + 1))
    for ((i = 0; i < PROGRESS_TIMEOUT * 20; i++)); do
      [ "$(rounds_done)" -ge "$want" ] && break
      exited "$VM_PID" && die "restart $k: the guest stopped (console: $OUT/console.log)"
      sleep 0.05
    done
    [ "$(rounds_done)" -ge "$want" ] || stalled "restart $k: no guest progress for ${PROGRESS_TIMEOUT}s"
    sleep 0.3
  fi
  hold_next=0
  if [ "$k" -lt "$RESTARTS" ] && is_hold $((k + 1)); then hold_next=1; fi
  old=$BACKEND_PID old_log=$BLOG
  t0=$(date +%s%N)
  if [ "$MODE" = kill ]; then
    kill -KILL "$old"
    wait "$old" 2>/dev/null || true
  else
    rc=0
    stop_pid "$old" || rc=$?
    [ "$rc" = 0 ] || die "restart $k: $BACKEND exited $rc after SIGTERM (log: $old_log)"
    [ "$BACKEND" != lsvblk ] || grep -q "volume flushed and closed" "$old_log" ||
      die "restart $k: lsvblk exited without 'volume flushed and closed' ($old_log)"
  fi
  stopped_ms=$(ms_since "$t0")
  start_backend "$hold_next"
  down_ms=$(ms_since "$t0")
  DOWN+=("$down_ms")
  reconnect_ms=-
  if [ "$BACKEND" = lsvblk ]; then
    wait_for_line "$BLOG" 'frontend connected' 30 "$BACKEND_PID" || die "restart $k: QEMU did not reconnect within 30 s ($BLOG)"
    reconnect_ms=$(ms_since "$t0")
    RECONNECT+=("$reconnect_ms")
  fi
  kind=$MODE
  [ "$held" = 0 ] || kind="kill, 1 held"
  ROWS+=("$(printf '%7s  %-13s %8s %8s %10s' "$k" "$kind" "$stopped_ms" "$down_ms" "$reconnect_ms")")
  echo "   restart $k ($kind): old gone after ${stopped_ms} ms, serving again after ${down_ms} ms, QEMU reconnected after ${reconnect_ms} ms"
done

rc=0
wait "$VM_PID" || rc=$?
VM_PID=""
result=$(cat "$OUT/guest.result")
echo "   $result"
[ "$rc" = 0 ] || { tail -n 30 "$BLOG" >&2; die "the guest's loop did not PASS (console: $OUT/console.log)"; }
rc=0
stop_pid "$BACKEND_PID" || rc=$?
BACKEND_PID=""
[ "$rc" = 0 ] || die "the last $BACKEND exited $rc after SIGTERM ($BLOG)"

# Requests each new daemon resubmitted from the inflight area.
resubmitted=0
if [ "$BACKEND" = lsvblk ]; then
  for ((i = 2; i <= n; i++)); do
    r=$(sed -n 's/.*resubmitting the requests the previous backend left in flight.*requests=\([0-9]*\).*/\1/p' "$OUT/backend-$i.log" | head -n1)
    ROWS[i - 2]+=$(printf ' %11s' "${r:-0}")
    resubmitted=$((resubmitted + ${r:-0}))
  done
fi
guest_errors=$(grep -a -c -E 'I/O error, dev|blk_update_request|is not a head' "$OUT/console.log" || true)
[ "$guest_errors" = 0 ] || die "the guest's kernel reported $guest_errors I/O errors (console: $OUT/console.log)"

echo
echo "restart-test: PASS $BACKEND, $RESTARTS restarts by $MODE ($holds with a request held back), ${SECONDS}s"
printf '%7s  %-13s %8s %8s %10s %11s\n' restart signal gone_ms down_ms reconnect resubmitted
printf '%s\n' "${ROWS[@]}"
line="backend=$BACKEND mode=$MODE restarts=$RESTARTS held=$holds guest=PASS guest_io_errors=$guest_errors"
line+=" down_p50_ms=$(percentile 50 "${DOWN[@]}") down_max_ms=$(percentile 100 "${DOWN[@]}")"
if [ "${#RECONNECT[@]}" -gt 0 ]; then
  line+=" reconnect_p50_ms=$(percentile 50 "${RECONNECT[@]}") reconnect_max_ms=$(percentile 100 "${RECONNECT[@]}")"
fi
line+=" resubmitted=$resubmitted wall_s=$SECONDS"
echo "$line"
[ -z "$SUMMARY" ] || echo "$line" >>"$SUMMARY"
