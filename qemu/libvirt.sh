#!/usr/bin/env bash
# libvirt.sh - lsvblk under libvirt, run for real: the domain in
# qemu/libvirt/domain.xml (TCG, memfd shared memory, a <disk type='vhostuser'>
# on an lsvblk socket) is validated with virt-xml-validate and booted twice
# with virt-qemu-run, libvirt's QEMU driver embedded in one process:
#   1. lsvkms + a 256 MiB volume (ACL alice); lsvblk serve --num-queues 2
#   2. boot "write" (the QEMU e2e's first boot)                -> must PASS
#   3. SIGTERM the daemon (exit 0), serve again, boot "verify" -> must PASS
#   4. libvirt's QEMU command line had vhost-user-blk-pci on our socket and
#      a shared memfd backend
# Why virt-qemu-run and not virsh: virsh needs a running libvirtd/virtqemud,
# which Debian ships in libvirt-daemon-system; that package pulls Debian's
# QEMU 7.2 and removes qemu-utils 10 (qemu-storage-daemon, the benchmark
# peer). libvirt-daemon + libvirt-clients (--no-install-recommends) leave
# QEMU alone and include virt-qemu-run, which drives the same QEMU driver
# (XML parsing, command line, security labels) without a daemon. The
# domain's <emulator> is the private QEMU of qemu/fetch.sh.
#
# Needs: virt-qemu-run, virt-xml-validate (Debian libvirt-daemon,
# libvirt-daemon-driver-qemu, libvirt-clients, libxml2-utils) and a
# `libvirt-qemu` user (libvirt's QEMU driver insists on it, even when, as
# here, its qemu.conf runs QEMU as root).
# Usage: qemu/libvirt.sh [--keep] [--boot-timeout S]
# Environment: LSVBLK_BIN_DIR, LSVBLK_CARGO_PROFILE as for qemu/e2e.sh.
# Logs (consoles, daemon logs, the filled-in domain XML, libvirt's QEMU log)
# go to qemu/out/libvirt-TIMESTAMP-PID/. Exit status 0 = all as expected.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=SCRIPTDIR/host-lib.sh
. "$QEMU_DIR/host-lib.sh"

KEEP=0 BOOT_TIMEOUT=600
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1; shift ;;
    --boot-timeout) BOOT_TIMEOUT=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$BOOT_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--boot-timeout must be a positive number"
for tool in virt-qemu-run virt-xml-validate; do
  command -v "$tool" >/dev/null ||
    die "$tool not found: apt-get install --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils"
done
getent passwd libvirt-qemu >/dev/null ||
  die "no libvirt-qemu user: useradd --system --user-group --no-create-home libvirt-qemu"

SIZE=$((256 * 1048576))
OUT=$QEMU_DIR/out/libvirt-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$OUT"
TMPD="" KMS_PID="" SERVE_PID="" VIRT_PID=""
cleanup() {
  local rc=$?
  trap - INT TERM
  if [ -n "$VIRT_PID" ]; then stop_pid "$VIRT_PID" || true; fi
  if [ -n "$RUN_PID" ]; then stop_pid "$RUN_PID" || true; fi
  if [ -n "$SERVE_PID" ]; then stop_pid "$SERVE_PID" || true; fi
  if [ -n "$KMS_PID" ]; then stop_pid "$KMS_PID" || true; fi
  if [ -z "$TMPD" ]; then :; elif [ "$KEEP" = 1 ]; then log "kept $TMPD"; else rm -rf "$TMPD"; fi
  [ "$rc" = 0 ] || log "FAILED (exit $rc) after ${SECONDS}s; logs in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
TMPD=$(mktemp -d /tmp/lsvblk-libvirt.XXXXXX)
VOL=$TMPD/vol
SOCK=$TMPD/vm1.sock
export NO_COLOR=1

echo "== binaries and guest"
build_binaries
run "$QEMU_DIR/fetch.sh" >"$OUT/fetch.log" 2>&1 || { cat "$OUT/fetch.log" >&2; die "fetch.sh failed"; }
run "$QEMU_DIR/build-initramfs.sh" >"$OUT/initramfs.log" 2>&1 ||
  { cat "$OUT/initramfs.log" >&2; die "build-initramfs.sh failed"; }

echo "== lsvkms + lsvblk create"
kms_start "$TMPD" "$OUT" alice
"$LSVBLK" create --volume "$VOL" --size 256M --acl alice --kms "unix:$KMS_SOCK" >"$OUT/create.log" 2>&1 ||
  { cat "$OUT/create.log" >&2; die "lsvblk create failed"; }
LBS=$(json_field block_bytes "$("$LSVBLK" inspect --volume "$VOL" --json)")

TOKEN=$TMPD/alice.token

# The embedded driver's state lives under ROOT; QEMU runs as root here (the
# daemon's socket is 0600 root). In production run QEMU as libvirt-qemu and
# serve with --socket-mode 0660 --socket-group libvirt-qemu.
ROOT=$TMPD/libvirt
mkdir -p "$ROOT/etc"
printf 'user = "root"\ngroup = "root"\nstdio_handler = "file"\n' >"$ROOT/etc/qemu.conf"

# result_line SCENARIO LOGFILE (as in run-vm.sh).
result_line() {
  tr -d '\r' <"$2" 2>/dev/null | grep -a -m1 -E "^LSVBLK-E2E: (PASS|FAIL) $1( |$)" || true
}

# boot SCENARIO: fills in the domain, validates it, runs it until the guest
# prints its result; the scenario must PASS.
boot() {
  local scen=$1 console=$OUT/$1.console xml=$OUT/$1.xml cmdline t0 line
  cmdline="console=ttyS0 panic=-1 quiet lsvblk.scenario=$scen lsvblk.sectors=$((SIZE / 512))"
  cmdline+=" lsvblk.queues=2 lsvblk.lbs=$LBS lsvblk.wc=wb"
  sed -e "s#@NAME@#lsvblk-$scen#" -e "s#@EMULATOR@#$QEMU_BIN#" -e "s#@KERNEL@#$KERNEL_DIR/vmlinuz#" \
    -e "s#@INITRD@#$INITRD#" -e "s#@CMDLINE@#$cmdline#" -e "s#@SOCKET@#$SOCK#" \
    -e "s#@CONSOLE@#$console#" "$QEMU_DIR/libvirt/domain.xml" >"$xml"
  virt-xml-validate "$xml" domain >"$OUT/$scen.validate" 2>&1 ||
    { cat "$OUT/$scen.validate" >&2; die "$xml does not validate"; }
  : >"$console"
  t0=$SECONDS
  virt-qemu-run --root "$ROOT" "$xml" >"$OUT/$scen.virt-qemu-run.log" 2>&1 &
  VIRT_PID=$!
  # virt-qemu-run stays up after the guest powers off: the console's result
  # line is the end of the boot.
  if ! wait_for_line "$console" '^LSVBLK-E2E: (PASS|FAIL) ' "$BOOT_TIMEOUT" "$VIRT_PID"; then
    tail -n 20 "$OUT/$scen.virt-qemu-run.log" "$console" >&2
    die "$scen: no result within ${BOOT_TIMEOUT}s"
  fi
  line=$(result_line "$scen" "$console")
  stop_pid "$VIRT_PID" || true
  VIRT_PID=""
  cp "$ROOT/log/qemu/lsvblk-$scen.log" "$OUT/$scen.qemu.log" 2>/dev/null || true
  echo "   $line ($((SECONDS - t0)) s under libvirt)"
  [ "$line" = "LSVBLK-E2E: PASS $scen" ] || { tail -n 30 "$console" >&2; die "$scen failed"; }
}

echo "== boot 1 under libvirt: write"
start_serve --num-queues 2
boot write
stop_serve

echo "== boot 2 under libvirt: verify, after a daemon restart"
start_serve --num-queues 2
boot verify
stop_serve

echo "== libvirt's QEMU command line"
qlog=$OUT/verify.qemu.log
grep -q -- "vhost-user-blk-pci" "$qlog" || die "no vhost-user-blk-pci in $qlog"
grep -q -- "\"path\":\"$SOCK\"" "$qlog" || grep -q -- "path=$SOCK" "$qlog" || die "$qlog does not use $SOCK"
grep -q -- '"qom-type":"memory-backend-memfd"' "$qlog" || die "no memfd memory backend in $qlog"
grep -q -- '"share":true' "$qlog" || die "guest memory not shared in $qlog"
echo "libvirt: 2 boots passed (write, verify), $((SECONDS)) s"
