#!/usr/bin/env bash
# run-vm.sh - boot the test guest (qemu/.cache kernel + initrd.gz) on a
# vhost-user-blk disk and run one scenario in it.
#
# Usage: qemu/run-vm.sh --socket PATH --scenario NAME [options]
#   --socket PATH      vhost-user-blk backend's UNIX socket (QEMU connects to it)
#   --scenario NAME    qemu/scenarios/NAME.sh (write, verify, smoke, probe)
#   --sectors N        expected disk size in 512-byte sectors (checked in the guest)
#   --timeout S        kill QEMU after S seconds (default 600)
#   --num-queues Q     vhost-user-blk-pci num-queues (default 1)
#   --smp N            guest CPUs (default 1; with N>1 each CPU gets its own queue)
#   --mem SIZE         guest RAM, shared with the backend via memfd (default 512M)
#   --accel MODE       auto (default: KVM only if a cached probe boot worked), tcg, kvm
#   --cpu MODEL        guest CPU model under TCG (default max)
#   --tcg-thread MODE  single or multi: TCG's vCPU threading (default: QEMU's)
#   --mem-backend KIND memfd (default) or file (a shared, unlinked file in /dev/shm)
#   --log FILE         serial console log (default qemu/out/NAME-TIMESTAMP.log)
#   --append ARGS      extra kernel command line words
#   --reconnect S      QEMU reconnects to the socket S seconds after the backend
#                      goes away (restart tests); default: a lost backend is final
#   --qmp PATH         QMP monitor on the UNIX socket PATH (migration tests)
#   --incoming URI     wait for an incoming migration on URI (e.g. unix:PATH)
#   --verbose          kernel messages on (no "quiet"), console shown while it runs
#   --print-cmd        print the QEMU command line before running it
# The guest prints "LSVBLK-E2E: PASS NAME" or "LSVBLK-E2E: FAIL NAME REASON" on
# its serial console and powers off. Exit status: 0 PASS, 1 FAIL, 3 no result
# (timeout, QEMU error, guest crash), 2 usage error. On failure the tail of the
# console log is printed.
# Needs qemu/fetch.sh and qemu/build-initramfs.sh to have run.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bad() { # usage / setup error: exit 2
  log "error: $*"
  exit 2
}
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

SOCK="" SCENARIO="" SECTORS="" TIMEOUT=600 QUEUES=1 SMP=1 MEM=512M ACCEL=auto LOG=""
CPU=max TCG_THREAD="" MEM_BACKEND=memfd
APPEND_EXTRA="" VERBOSE=0 PRINT_CMD=0 RECONNECT="" QMP="" INCOMING=""
while [ $# -gt 0 ]; do
  case $1 in
    --socket) SOCK=${2:?}; shift 2 ;;
    --scenario) SCENARIO=${2:?}; shift 2 ;;
    --sectors) SECTORS=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --num-queues) QUEUES=${2:?}; shift 2 ;;
    --smp) SMP=${2:?}; shift 2 ;;
    --mem) MEM=${2:?}; shift 2 ;;
    --accel) ACCEL=${2:?}; shift 2 ;;
    --cpu) CPU=${2:?}; shift 2 ;;
    --tcg-thread) TCG_THREAD=${2:?}; shift 2 ;;
    --mem-backend) MEM_BACKEND=${2:?}; shift 2 ;;
    --log) LOG=${2:?}; shift 2 ;;
    --append) APPEND_EXTRA=${2?}; shift 2 ;;
    --reconnect) RECONNECT=${2:?}; shift 2 ;;
    --qmp) QMP=${2:?}; shift 2 ;;
    --incoming) INCOMING=${2:?}; shift 2 ;;
    --verbose) VERBOSE=1; shift ;;
    --print-cmd) PRINT_CMD=1; shift ;;
    -h | --help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
[ -n "$SCENARIO" ] || { log "--scenario is required"; usage; }
[[ "$SCENARIO" =~ ^[a-z0-9_-]+$ ]] || bad "bad scenario name: $SCENARIO"
[ -f "$QEMU_DIR/scenarios/$SCENARIO.sh" ] || bad "no such scenario: $QEMU_DIR/scenarios/$SCENARIO.sh"
[ -z "$SECTORS" ] || [[ "$SECTORS" =~ ^[0-9]+$ ]] || bad "--sectors must be a number"
[[ "$QUEUES" =~ ^[1-9][0-9]*$ ]] || bad "--num-queues must be a positive number"
[[ "$SMP" =~ ^[1-9][0-9]*$ ]] || bad "--smp must be a positive number"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || bad "--timeout must be a positive number of seconds"
[ -z "$RECONNECT" ] || [[ "$RECONNECT" =~ ^[1-9][0-9]*$ ]] || bad "--reconnect must be a positive number of seconds"
case $ACCEL in auto | tcg | kvm) ;; *) bad "--accel must be auto, tcg or kvm" ;; esac
case $TCG_THREAD in "" | single | multi) ;; *) bad "--tcg-thread must be single or multi" ;; esac
case $MEM_BACKEND in memfd | file) ;; *) bad "--mem-backend must be memfd or file" ;; esac
[[ "$CPU" =~ ^[A-Za-z0-9_.,=+-]+$ ]] || bad "bad --cpu model: $CPU"
if [ "$SCENARIO" != probe ]; then
  [ -n "$SOCK" ] || { log "--socket is required"; usage; }
  [ -S "$SOCK" ] || bad "$SOCK is not a UNIX socket (is the vhost-user-blk backend running?)"
fi
for f in "$QEMU_BIN" "$KERNEL_DIR/vmlinuz" "$INITRD" "$INITRD_PROBE"; do
  [ -e "$f" ] || bad "$f missing: run qemu/fetch.sh and qemu/build-initramfs.sh"
done
if [ -z "$LOG" ]; then
  mkdir -p "$QEMU_DIR/out"
  LOG=$QEMU_DIR/out/$SCENARIO-$(date +%Y%m%d-%H%M%S)-$$.log
fi
mkdir -p "$(dirname "$LOG")"

export QEMU_MODULE_DIR=$QEMU_MODDIR # TCG is a loadable module in Debian's QEMU
FIRMWARE=(-L "$QEMU_ROOT/usr/share/qemu" -L "$QEMU_ROOT/usr/share/seabios" -L "$QEMU_ROOT/usr/lib/ipxe/qemu")

# qemu_cmd ACCEL SCENARIO SOCKET(or "") LOGFILE [INITRD]: fills the array CMD.
qemu_cmd() {
  local accel=$1 scen=$2 sock=$3 logf=$4 initrd=${5:-$INITRD} append
  append="console=ttyS0 panic=-1 lsvblk.scenario=$scen"
  [ "$VERBOSE" = 1 ] || append+=" quiet"
  [ -z "$SECTORS" ] || append+=" lsvblk.sectors=$SECTORS"
  [ -z "$sock" ] || append+=" lsvblk.queues=$QUEUES"
  [ -z "$APPEND_EXTRA" ] || append+=" $APPEND_EXTRA"
  CMD=("$QEMU_BIN" "${FIRMWARE[@]}" -nodefaults -no-user-config -display none -monitor none -no-reboot)
  if [ "$accel" = kvm ]; then
    CMD+=(-accel kvm -cpu host)
  else
    CMD+=(-accel "tcg${TCG_THREAD:+,thread=$TCG_THREAD}" -cpu "$CPU")
  fi
  # vhost-user: the backend maps guest RAM, so it must be shared (a memfd,
  # or a file QEMU creates in /dev/shm and unlinks at once).
  local memobj="memory-backend-memfd,id=mem,size=$MEM,share=on"
  if [ "$MEM_BACKEND" = file ]; then
    memobj="memory-backend-file,id=mem,size=$MEM,share=on,mem-path=/dev/shm"
  fi
  CMD+=(-m "$MEM" -smp "$SMP" -object "$memobj" -machine "pc,memory-backend=mem")
  if [ -n "$sock" ]; then
    CMD+=(-chardev "socket,id=vub0,path=$sock${RECONNECT:+,reconnect=$RECONNECT}"
      -device "vhost-user-blk-pci,chardev=vub0,num-queues=$QUEUES")
  fi
  [ -z "$QMP" ] || CMD+=(-qmp "unix:$QMP,server=on,wait=off")
  [ -z "$INCOMING" ] || CMD+=(-incoming "$INCOMING")
  CMD+=(-chardev "file,id=con0,path=$logf" -serial chardev:con0
    -kernel "$KERNEL_DIR/vmlinuz" -initrd "$initrd" -append "$append")
}

# result_line SCENARIO LOGFILE: the guest's LSVBLK-E2E line, if any.
result_line() {
  tr -d '\r' <"$2" 2>/dev/null | grep -a -m1 -E "^LSVBLK-E2E: (PASS|FAIL) $1( |$)" || true
}

# Pick the accelerator. KVM only if a probe boot under KVM reaches /init: on
# nested/software hypervisors /dev/kvm opens but cannot run Linux (see README).
# The verdict is cached per host kernel + QEMU + guest kernel.
pick_accel() {
  if [ "$ACCEL" != auto ]; then
    echo "$ACCEL"
    return
  fi
  if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo tcg
    return
  fi
  local key cache=$CACHE/accel-probe
  key="$(uname -r)|$("$QEMU_BIN" --version | head -n1)|$(cat "$KERNEL_DIR/VERSION")"
  if [ -f "$cache" ] && [ "$(head -n1 "$cache")" = "$key" ]; then
    sed -n 2p "$cache"
    return
  fi
  local plog verdict=tcg t0
  plog=$(mktemp "$CACHE/probe.XXXXXX.log")
  t0=$SECONDS
  qemu_cmd kvm probe "" "$plog" "$INITRD_PROBE"
  timeout --kill-after=5 10 "${CMD[@]}" >"$plog.stderr" 2>&1 </dev/null || true
  if result_line probe "$plog" | grep -q PASS; then verdict=kvm; fi
  log "KVM probe boot: $verdict ($((SECONDS - t0))s; cached in $cache)"
  rm -f "$plog" "$plog.stderr"
  printf '%s\n%s\n' "$key" "$verdict" >"$cache"
  echo "$verdict"
}

accel=$(pick_accel)
initrd=$INITRD
[ "$SCENARIO" != probe ] || initrd=$INITRD_PROBE # no disk, no modules needed
qemu_cmd "$accel" "$SCENARIO" "$SOCK" "$LOG" "$initrd"
if [ "$PRINT_CMD" = 1 ]; then
  # Shell-quoted only where needed, so it can be pasted.
  q() { if [[ "$1" =~ ^[A-Za-z0-9_./=,:+@%-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi; }
  printf 'QEMU_MODULE_DIR=%s' "$(q "$QEMU_MODULE_DIR")"
  for a in "${CMD[@]}"; do printf ' %s' "$(q "$a")"; done
  printf '\n'
fi

: >"$LOG"
tailpid=""
if [ "$VERBOSE" = 1 ]; then
  tail -n +1 -f "$LOG" &
  tailpid=$!
fi
log "booting scenario $SCENARIO ($accel, ${SMP} cpu, num-queues $QUEUES, timeout ${TIMEOUT}s), console: $LOG"
start=$(date +%s%N)
rc=0
# timeout: QEMU can hang instead of exiting after an emulation failure.
# Started in the background and waited for, so that a SIGINT/SIGTERM to this
# script stops QEMU too (timeout puts QEMU in its own process group).
timeout --kill-after=10 "$TIMEOUT" "${CMD[@]}" >"$LOG.stderr" 2>&1 </dev/null &
qpid=$!
trap 'kill -TERM "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; [ -z "$tailpid" ] || kill "$tailpid" 2>/dev/null; exit 130' INT TERM
wait "$qpid" || rc=$?
trap - INT TERM
ms=$((($(date +%s%N) - start) / 1000000))
wall=$(printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)))
if [ -n "$tailpid" ]; then
  sleep 0.2
  kill "$tailpid" 2>/dev/null || true
  wait "$tailpid" 2>/dev/null || true
fi
[ -s "$LOG.stderr" ] || rm -f "$LOG.stderr"

line=$(result_line "$SCENARIO" "$LOG")
show_tail() {
  echo "---- last 40 lines of $LOG ----" >&2
  tr -d '\r' <"$LOG" | tail -n 40 >&2
  if [ -s "$LOG.stderr" ]; then
    echo "---- QEMU stderr ($LOG.stderr) ----" >&2
    tail -n 20 "$LOG.stderr" >&2
  fi
  echo "----" >&2
}
case $line in
  "LSVBLK-E2E: PASS $SCENARIO")
    echo "$line (${wall}s wall, $accel)"
    exit 0
    ;;
  "LSVBLK-E2E: FAIL"*)
    show_tail
    echo "$line (${wall}s wall, $accel)"
    exit 1
    ;;
  *)
    show_tail
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      echo "LSVBLK-E2E: NORESULT $SCENARIO timeout after ${TIMEOUT}s ($accel)"
    else
      echo "LSVBLK-E2E: NORESULT $SCENARIO QEMU exited with status $rc after ${wall}s ($accel)"
    fi
    exit 3
    ;;
esac
