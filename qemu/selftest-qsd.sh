#!/usr/bin/env bash
# selftest-qsd.sh - prove the guest tooling against a real vhost-user-blk
# backend, qemu-storage-daemon (QSD) exporting a 256 MiB raw file:
#   1. fetch.sh + build-initramfs.sh
#   2. QSD up, boot "write"                                  -> must PASS
#   3. QSD restarted on the same file, boot "verify"         -> must PASS
#   4. QSD stopped, the file damaged in each checked area (a dd probe sector,
#      a misplaced 4k block in the fio overwrite region, a bit in the fio random
#      region, a byte of an ext2 file), QSD restarted, boot "verify"
#                                      -> must FAIL and name all four areas
#   5. QSD restarted with num-queues=2, boot "smoke" with 2 queues and 2 CPUs
#                                      -> must PASS (each queue carries I/O)
# All QSD/QEMU processes and temp files are cleaned up on exit (trap).
#
# Usage: qemu/selftest-qsd.sh [--num-queues Q] [--smp N] [--logical-block-size B] [--no-negative] [--no-multiqueue] [--keep]
#   --num-queues Q    queues for the write/verify boots (default 1)
#   --smp N           guest CPUs for the write/verify boots (default 1; the guest
#                     uses min(Q, N) queues)
#   --logical-block-size B  QSD export's logical block size (default 512; the
#                     guest checks it)
#   --no-negative     skip step 4;  --no-multiqueue  skip step 5
#   --keep            keep the temp dir (disk image, QSD logs)
# Environment: LSVBLK_QSD=/path/to/qemu-storage-daemon picks the backend binary.
# Console logs go to qemu/out/selftest-TIMESTAMP/. Exit status 0 = all as expected.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUEUES=1 SMP=1 LBS=512 NEGATIVE=1 MULTIQUEUE=1 KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --num-queues) QUEUES=${2:?}; shift 2 ;;
    --smp) SMP=${2:?}; shift 2 ;;
    --logical-block-size) LBS=${2:?}; shift 2 ;;
    --no-negative) NEGATIVE=0; shift ;;
    --no-multiqueue) MULTIQUEUE=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
# qemu-storage-daemon: $LSVBLK_QSD, else the installed one (qemu-utils 10 here),
# else the 7.2 one from the private QEMU root (Debian 12 ships it in
# qemu-system-common, which fetch.sh unpacks).
QSD=${LSVBLK_QSD:-$(command -v qemu-storage-daemon || echo "$QEMU_ROOT/usr/bin/qemu-storage-daemon")}

MIB=1048576
SIZE=$((256 * MIB))
SECTORS=$((SIZE / 512))
TMPD=$(mktemp -d /tmp/lsvblk-qsd.XXXXXX)
DISK=$TMPD/disk.raw
SOCK=$TMPD/vhost-user-blk.sock
OUT=$QEMU_DIR/out/selftest-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
QSD_PID=""

RUNVM_PID=""
cleanup() {
  if [ -n "$RUNVM_PID" ]; then # interrupted during a boot: run-vm.sh stops its QEMU
    kill -TERM "$RUNVM_PID" 2>/dev/null || true
    wait "$RUNVM_PID" 2>/dev/null || true
  fi
  stop_qsd
  if [ "$KEEP" = 1 ]; then log "kept $TMPD"; else rm -rf "$TMPD"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_qsd NUM_QUEUES: export $DISK on $SOCK; waits for the socket.
qsd_n=0
start_qsd() {
  qsd_n=$((qsd_n + 1))
  rm -f "$SOCK"
  "$QSD" \
    --blockdev "driver=file,node-name=file0,filename=$DISK" \
    --export "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=$1,logical-block-size=$LBS" \
    >"$TMPD/qsd-$qsd_n.log" 2>&1 &
  QSD_PID=$!
  for _ in $(seq 100); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$QSD_PID" 2>/dev/null || { cat "$TMPD/qsd-$qsd_n.log" >&2; die "qemu-storage-daemon exited"; }
    sleep 0.1
  done
  die "qemu-storage-daemon did not create $SOCK in 10 s"
}
stop_qsd() {
  [ -n "$QSD_PID" ] || return 0
  kill -TERM "$QSD_PID" 2>/dev/null || true
  wait "$QSD_PID" 2>/dev/null || true
  QSD_PID=""
  if [ -s "$TMPD/qsd-$qsd_n.log" ]; then
    log "qemu-storage-daemon #$qsd_n said:"
    sed 's/^/  /' "$TMPD/qsd-$qsd_n.log" >&2
  fi
}

declare -a SUMMARY=()
# boot LABEL EXPECT(0=PASS,1=FAIL) run-vm.sh-args...: sets LAST_LINE.
boot() {
  local label=$1 expect=$2 rc=0 t0
  shift 2
  t0=$(date +%s%N)
  # In the background + wait, so a signal reaches the trap (and run-vm.sh) at once.
  "$QEMU_DIR/run-vm.sh" --socket "$SOCK" --log "$OUT/$label.log" --timeout 300 \
    --append "lsvblk.lbs=$LBS" "$@" >"$OUT/$label.result" &
  RUNVM_PID=$!
  wait "$RUNVM_PID" || rc=$?
  RUNVM_PID=""
  LAST_LINE=$(cat "$OUT/$label.result")
  rm -f "$OUT/$label.result"
  local ms=$((($(date +%s%N) - t0) / 1000000))
  echo "$LAST_LINE"
  SUMMARY+=("$(printf '%-16s %6d.%01ds  %s' "$label" $((ms / 1000)) $((ms % 1000 / 100)) "${LAST_LINE% (*}")")
  [ "$rc" = "$expect" ] || die "$label: run-vm.sh exited $rc, expected $expect (console: $OUT/$label.log)"
}

# flip_byte OFFSET: invert one byte of $DISK.
flip_byte() {
  local b
  b=$(dd if="$DISK" bs=1 skip="$1" count=1 status=none | od -An -tu1 | tr -d ' ')
  # shellcheck disable=SC2059 # octal escape built on purpose
  printf "\\$(printf '%03o' $((255 - b)))" | dd of="$DISK" bs=1 seek="$1" conv=notrunc status=none
}

t_all=$(date +%s)
"$QEMU_DIR/fetch.sh"
"$QEMU_DIR/build-initramfs.sh"
[ -x "$QSD" ] || die "no qemu-storage-daemon at $QSD"
log "backend: $QSD ($("$QSD" --version | head -n1))"

truncate -s "$SIZE" "$DISK"
log "disk $DISK: $SIZE bytes ($SECTORS sectors); console logs in $OUT"

start_qsd "$QUEUES"
boot write 0 --scenario write --sectors "$SECTORS" --num-queues "$QUEUES" --smp "$SMP"
stop_qsd

start_qsd "$QUEUES"
boot verify 0 --scenario verify --sectors "$SECTORS" --num-queues "$QUEUES" --smp "$SMP"
stop_qsd

if [ "$NEGATIVE" = 1 ]; then
  # One defect per checked area; the verify scenario must report each.
  flip_byte $((40005 * 512 + 17))                                # dd probe at lba 40000+123
  dd if="$DISK" of="$DISK" bs=4096 skip=$((64 * 256 + 100)) seek=$((64 * 256 + 101)) count=1 \
    conv=notrunc status=none                                     # fio overwrite region: misplaced block
  flip_byte $((96 * MIB + 5 * MIB + 12345))                      # fio random region
  dd if="$DISK" of="$TMPD/fs.img" bs=$MIB skip=128 count=16 status=none
  fs_hit=$(grep -obUa -m1 'lsvblk file odd' "$TMPD/fs.img" | cut -d: -f1 || true)
  rm -f "$TMPD/fs.img"
  [ -n "$fs_hit" ] || die "did not find the ext2 file 'odd' in the image"
  flip_byte $((128 * MIB + fs_hit + 100))                        # ext2 file "odd"
  start_qsd "$QUEUES"
  log "damaged the image in 4 places: the next boot must FAIL (its console tail below is expected)"
  boot verify-damaged 1 --scenario verify --sectors "$SECTORS" --num-queues "$QUEUES" --smp "$SMP"
  stop_qsd
  for want in "dd pattern gen1 mismatch at lba40000+123" "overwrite region" "random region" "fs: wrong content: odd"; do
    [[ "$LAST_LINE" == *"$want"* ]] || die "verify-damaged: FAIL line does not mention '$want': $LAST_LINE"
  done
  log "verify-damaged failed as it must, naming all four damaged areas"
fi

if [ "$MULTIQUEUE" = 1 ]; then
  start_qsd 2
  boot smoke-2q 0 --scenario smoke --sectors "$SECTORS" --num-queues 2 --smp 2
  stop_qsd
fi

echo
echo "selftest-qsd: all boots as expected ($(($(date +%s) - t_all))s in all); wall time per boot:"
printf '  %s\n' "${SUMMARY[@]}"
echo "console logs: $OUT"
