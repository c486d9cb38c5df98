#!/usr/bin/env bash
# e2e.sh - the QEMU end-to-end test of lsvblk: a real Linux guest (TCG) on an
# encrypted lsvblk volume served over vhost-user-blk, keys from lsvkms.
#   1. binaries: cargo build --release --bins (or $LSVBLK_BIN_DIR), then
#      fetch.sh + build-initramfs.sh
#   2. lsvkms init + serve in a temp dir; tokens for alice, bob, mallory;
#      lsvblk create of a 256 MiB volume with --acl alice; lsvblk serve as alice
#   3. boot "write" (guest checks size, 4k logical blocks, write-back cache)
#                                                           -> must PASS
#   3b. snapshot handoff, alice's daemon still serving: lsvblk acl set
#      alice,bob (lsvkms reseals the key), lsvblk snapshot create (through
#      the daemon's control socket); bob serves the snapshot read-only on a
#      second socket and boots "readonly" on it (guest sees RO, a write is
#      refused, every dd probe and ext2 file reads back) -> must PASS;
#      mallory's serve --snapshot is refused with exit 77 and lsvkms's audit
#      shows her denial
#   4. SIGTERM the daemon                                   -> must exit 0
#   5. serve again on the same volume, boot "verify"        -> must PASS; exit 0
#   6. no volume file holds guest plaintext: grep for the dd probes' text
#      (LSVBLK-DD), fio's pattern (LSVBLK-B) and the ext2 files' text finds
#      nothing (a control file proves the grep finds them when present)
#   7. daemon stopped, one byte flipped inside the ciphertext of the block that
#      holds the dd probe at LBA 40000 (found by walking the segment records),
#      serve, boot "verify"                   -> must FAIL naming lba40000 (the
#      daemon's block checksum turns it into an I/O error, never wrong data)
#   8. serve with --num-queues 2, boot "smoke" with 2 queues and 2 CPUs
#                                           -> must PASS, every queue used
#   9. plaintext check again (now including smoke's data)
#  10. an ephemeral disk (lsvblk serve --ephemeral --size 256M, no lsvkms, no
#      token): boot "smoke" on it -> must PASS; no plaintext in its files
#      while served; SIGTERM -> exit 0 and its directory is gone
#  11. a root file system over a plain base image: an ext2 image (its own
#      busybox, /etc, and qemu/base/init as /sbin/init) made with mke2fs -d;
#      two volumes created with --base on it; boot "rootfs" on the first (the
#      initramfs mounts /dev/vda and switch_roots into it; its /sbin/init,
#      PID 1 from the volume, writes a marker, a line in /etc and 2 MiB),
#      reboot it (all still there), boot the second (pristine: none of it)
#      -> each must PASS; the image's bytes unchanged; no guest text in the
#      first's files
# Every lsvkms / lsvblk / QEMU process and the temp dir are cleaned up on exit,
# also on failure and on SIGINT/SIGTERM. Exit status 0 = all as expected.
#
# Usage: qemu/e2e.sh [--no-negative] [--no-multiqueue] [--keep] [--boot-timeout S]
#   --no-negative     skip step 7;  --no-multiqueue  skip step 8
#   --keep            keep the temp dir (volume, lsvkms state) for inspection
#   --boot-timeout S  limit per guest boot (default 300)
# Environment:
#   LSVBLK_BIN_DIR    directory with prebuilt lsvblk and lsvkms (no cargo build)
#   LSVBLK_CARGO_PROFILE  cargo profile to build when LSVBLK_BIN_DIR is unset
#                     (default release)
# Logs (console of each boot, daemon logs) go to qemu/out/e2e-TIMESTAMP-PID/.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=SCRIPTDIR/host-lib.sh
. "$QEMU_DIR/host-lib.sh"

NEGATIVE=1 MULTIQUEUE=1 KEEP=0 BOOT_TIMEOUT=300
while [ $# -gt 0 ]; do
  case $1 in
    --no-negative) NEGATIVE=0; shift ;;
    --no-multiqueue) MULTIQUEUE=0; shift ;;
    --keep) KEEP=1; shift ;;
    --boot-timeout) BOOT_TIMEOUT=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$BOOT_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--boot-timeout must be a positive number"

MIB=1048576
SIZE=$((256 * MIB))
SECTORS=$((SIZE / 512))
OUT=$QEMU_DIR/out/e2e-$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$OUT"
TMPD=""
KMS_PID="" SERVE_PID=""
cleanup() {
  local rc=$?
  trap - INT TERM
  if [ -n "$RUN_PID" ]; then stop_pid "$RUN_PID" || true; fi # run-vm.sh stops its QEMU
  if [ -n "$SERVE_PID" ]; then stop_pid "$SERVE_PID" || true; fi
  if [ -n "$BOB_PID" ]; then stop_pid "$BOB_PID" || true; fi
  if [ -n "$KMS_PID" ]; then stop_pid "$KMS_PID" || true; fi
  if [ -z "$TMPD" ]; then :; elif [ "$KEEP" = 1 ]; then log "kept $TMPD"; else rm -rf "$TMPD"; fi
  if [ "$rc" != 0 ]; then
    log "FAILED (exit $rc) after $((SECONDS))s; logs in $OUT"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
TMPD=$(mktemp -d /tmp/lsvblk-e2e.XXXXXX)
KMS_DIR=$TMPD/kms
KMS_SOCK=$TMPD/kms.sock
VOL=$TMPD/vol
SOCK=$TMPD/vhost-user-blk.sock
TOKEN=$TMPD/alice.token
BOB_SOCK=$TMPD/bob.sock
BOB_PID=""
export NO_COLOR=1 # plain daemon logs


# --------------------------------------------------------------- summary
declare -a SUMMARY=()
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%01ds' $(($1 / 1000)) $(($1 % 1000 / 100)); }
STEP_T0=0
step() { # TITLE: starts a timed step
  STEP_T0=$(now_ms)
  echo "== $*"
}
done_step() { # LABEL RESULT
  local line
  line=$(printf '%-18s %7s  %s' "$1" "$(secs $(($(now_ms) - STEP_T0)))" "$2")
  SUMMARY+=("$line")
  echo "   $line"
}

# ------------------------------------------------------------ binaries
step "binaries"
build_binaries
done_step binaries "$BIN_HOW"

step "guest: fetch.sh + build-initramfs.sh"
run "$QEMU_DIR/fetch.sh" >"$OUT/fetch.log" 2>&1 || { cat "$OUT/fetch.log" >&2; die "fetch.sh failed"; }
run "$QEMU_DIR/build-initramfs.sh" >"$OUT/initramfs.log" 2>&1 ||
  { cat "$OUT/initramfs.log" >&2; die "build-initramfs.sh failed"; }
done_step guest "kernel $(cat "$KERNEL_DIR/VERSION"), $(du -h "$INITRD" | cut -f1) initramfs"

# ------------------------------------------------------- lsvkms + volume
step "lsvkms + lsvblk create"
"$LSVKMS" init --dir "$KMS_DIR" >"$OUT/lsvkms-init.log" 2>&1 ||
  { cat "$OUT/lsvkms-init.log" >&2; die "lsvkms init failed"; }
"$LSVKMS" serve --dir "$KMS_DIR" --socket "$KMS_SOCK" >"$OUT/lsvkms.log" 2>&1 &
KMS_PID=$!
wait_socket "$KMS_SOCK" "$KMS_PID" "lsvkms serve" "$OUT/lsvkms.log"
for user in alice bob mallory; do
  (umask 077 && "$LSVKMS" token issue --dir "$KMS_DIR" --user "$user" --ttl 1h >"$TMPD/$user.token") ||
    die "lsvkms token issue failed"
done
created=$("$LSVBLK" create --volume "$VOL" --size 256M --acl alice --kms "unix:$KMS_SOCK" --json 2>"$OUT/create.log") ||
  { cat "$OUT/create.log" >&2; die "lsvblk create failed"; }
KEY_ID=$(json_field key_id "$created")
[ -n "$KEY_ID" ] || die "no key_id in lsvblk create's output: $created"
inspect=$("$LSVBLK" inspect --volume "$VOL" --json)
size=$(json_field size_bytes "$inspect")
LBS=$(json_field block_bytes "$inspect")
[ "$size" = "$SIZE" ] || die "lsvblk inspect says size_bytes=$size, expected $SIZE"
[[ "$inspect" == *"\"current_key_id\":\"$KEY_ID\""* ]] || die "lsvblk inspect shows another key id: $inspect"
done_step setup "volume $SIZE bytes, ${LBS}-byte blocks, key id $KEY_ID"

# ------------------------------------------------------------ serving
# boot LABEL EXPECT(0 PASS, 1 FAIL) run-vm.sh args...: sets LAST_LINE.
boot() {
  local label=$1 expect=$2 rc=0
  shift 2
  run "$QEMU_DIR/run-vm.sh" --socket "$SOCK" --log "$OUT/$label.log" --timeout "$BOOT_TIMEOUT" \
    "$@" >"$OUT/$label.result" || rc=$?
  LAST_LINE=$(cat "$OUT/$label.result")
  echo "   $LAST_LINE"
  if [ "$rc" != "$expect" ]; then
    sed 's/^/  | /' "$SERVE_LOG" | tail -n 30 >&2
    die "$label: run-vm.sh exited $rc, expected $expect (console: $OUT/$label.log, daemon: $SERVE_LOG)"
  fi
}

# The guest also checks what the daemon offers: 4k logical blocks (the
# volume's block size) and a write-back cache (VIRTIO_BLK_F_FLUSH + WCE).
GEOMETRY="lsvblk.lbs=$LBS lsvblk.wc=wb"

step "boot 1: write"
start_serve
boot write 0 --scenario write --sectors "$SECTORS" --append "$GEOMETRY"
done_step write "${LAST_LINE% (*}"

# ------------------------------------------------------ snapshot handoff
step "snapshot handoff: alice snapshots while serving; bob's guest reads it"
"$LSVBLK" acl set "$VOL" --acl alice,bob --kms "unix:$KMS_SOCK" --token-file "$TOKEN" \
  >"$OUT/acl-set.log" 2>&1 || { cat "$OUT/acl-set.log" >&2; die "lsvblk acl set failed"; }
snap=$("$LSVBLK" snapshot create "$VOL" handoff --json 2>"$OUT/snapshot.log") ||
  { cat "$OUT/snapshot.log" >&2; die "lsvblk snapshot create (served volume) failed"; }
[[ "$snap" == *'"acl":["alice","bob"]'* ]] || die "the snapshot does not carry the new ACL: $snap"
"$LSVBLK" serve --volume "$VOL" --snapshot handoff --read-only --socket "$BOB_SOCK" \
  --kms "unix:$KMS_SOCK" --token-file "$TMPD/bob.token" >"$OUT/serve-bob.log" 2>&1 &
BOB_PID=$!
wait_socket "$BOB_SOCK" "$BOB_PID" "lsvblk serve --snapshot (bob)" "$OUT/serve-bob.log"
rc=0
run "$QEMU_DIR/run-vm.sh" --socket "$BOB_SOCK" --log "$OUT/handoff.log" --timeout "$BOOT_TIMEOUT" \
  --scenario readonly --sectors "$SECTORS" --append "$GEOMETRY" >"$OUT/handoff.result" || rc=$?
echo "   $(cat "$OUT/handoff.result")"
[ "$rc" = 0 ] || { tail -n 30 "$OUT/serve-bob.log" >&2; die "handoff: bob's guest did not PASS (console: $OUT/handoff.log)"; }
pid=$BOB_PID
BOB_PID=""
stop_pid "$pid" || die "lsvblk serve --snapshot (bob) did not exit 0 after SIGTERM"
rc=0
timeout 60 "$LSVBLK" serve --volume "$VOL" --snapshot handoff --read-only --socket "$TMPD/mallory.sock" \
  --kms "unix:$KMS_SOCK" --token-file "$TMPD/mallory.token" >"$OUT/serve-mallory.log" 2>&1 || rc=$?
[ "$rc" = 77 ] || die "mallory's serve --snapshot exited $rc, expected 77 (refused): $(cat "$OUT/serve-mallory.log")"
grep -q "not on" "$OUT/serve-mallory.log" || die "mallory's refusal does not say why: $(cat "$OUT/serve-mallory.log")"
grep -F '"user":"mallory"' "$KMS_DIR/audit.log" | grep -q '"decision":"deny"' ||
  die "lsvkms's audit log shows no denial for mallory"
stop_serve
done_step handoff "snapshot $(json_field create_ms "$snap") ms; bob's guest PASS; mallory refused (77, audited)"

step "boot 2: verify (daemon restarted on the same volume)"
start_serve
boot verify 0 --scenario verify --sectors "$SECTORS" --append "$GEOMETRY"
stop_serve
done_step verify "${LAST_LINE% (*}; SIGTERM -> exit 0"

# ------------------------------------------------------ plaintext check
plaintext_check() { # LABEL
  local files n bytes
  mapfile -t files < <(find "$VOL" -type f | LC_ALL=C sort)
  [ "${#files[@]}" -gt 0 ] || die "no files under $VOL"
  bytes=$(cat "${files[@]}" | wc -c)
  n=$(plaintext_hits "${files[@]}")
  if [ "$n" != 0 ]; then
    for f in "${files[@]}"; do
      for p in "${PLAINTEXTS[@]}"; do
        c=$(grep -a -c -F -e "$p" "$f" || true)
        [ "$c" = 0 ] || log "plaintext '$p' found $c times in $f"
      done
    done
    die "the volume's files hold guest plaintext"
  fi
  done_step "$1" "0 plaintext hits in ${#files[@]} files, $((bytes / MIB)) MiB"
}
# Control: the same grep does find a probe sector hidden in binary data (as
# it would in a raw image, e.g. selftest-qsd.sh's, which holds the guest's
# sectors as they are).
{
  head -c 4096 /dev/urandom
  probe_sector 40000
  head -c 4096 /dev/urandom
} >"$TMPD/control.bin"
[ "$(plaintext_hits "$TMPD/control.bin")" -ge 1 ] || die "internal: the plaintext grep misses a probe sector in binary data"

step "plaintext check (after write + verify)"
plaintext_check plaintext

# ------------------------------------------------------ negative check
if [ "$NEGATIVE" = 1 ]; then
  step "boot 3: verify on a damaged volume (must FAIL)"
  # The dd probe "40000 123" covers 512-byte sectors 40000..40122; damage the
  # volume block holding sector 40005, 100 bytes into its ciphertext.
  block=$((40005 * 512 / LBS))
  mapfile -t segs < <(find "$VOL/segments" -name '*.seg' | LC_ALL=C sort)
  where=$(find_block "$block" "${segs[@]}")
  [ -n "$where" ] || die "no data record holds volume block $block"
  read -r seg off seq <<<"$where"
  flip_byte "$seg" $((off + 100))
  echo "   flipped byte $((off + 100)) of $(basename "$seg"): ciphertext of block $block (record seq $seq)"
  start_serve
  log "the next boot must FAIL (its console tail below is expected)"
  boot verify-damaged 1 --scenario verify --sectors "$SECTORS" --append "$GEOMETRY"
  stop_serve
  [[ "$LAST_LINE" == *"lba40000"* ]] ||
    die "verify-damaged: the FAIL line does not name the damaged probe lba40000: $LAST_LINE"
  if [[ "$LAST_LINE" == *"lba40000(read error"* ]]; then
    how="the guest got an I/O error"
  else
    how="the guest saw a mismatch"
  fi
  # Only the damaged block may fail: a broken neighbour would mean the damage
  # spread (or the daemon served wrong data elsewhere).
  reason=${LAST_LINE#*FAIL verify }
  reason=${reason% (*}
  rest=${reason#*lba40000}
  [[ "$reason" == "dd pattern gen1 mismatch at lba40000"* && "$rest" != *lba* && "$rest" != *";"* ]] ||
    die "verify-damaged: more than the damaged block failed: $reason"
  grep -q "checksum" "$SERVE_LOG" && how="$how; daemon: block checksum mismatch"
  done_step verify-damaged "FAIL as required at lba40000 ($how)"
fi

if [ "$MULTIQUEUE" = 1 ]; then
  step "boot 4: smoke, 2 queues, 2 CPUs"
  start_serve --num-queues 2
  boot smoke-2q 0 --scenario smoke --sectors "$SECTORS" --num-queues 2 --smp 2 --append "$GEOMETRY"
  stop_serve
  done_step smoke-2q "${LAST_LINE% (*}; SIGTERM -> exit 0"
  step "plaintext check (after smoke)"
  plaintext_check plaintext-2
fi

step "boot 5: smoke on an ephemeral disk (key made in the daemon, never stored)"
SCRATCH=$TMPD/scratch
SCRATCH_SOCK=$TMPD/scratch.sock
SERVE_LOG=$OUT/serve-ephemeral.log
"$LSVBLK" serve --ephemeral --size 256M --volume "$SCRATCH" --socket "$SCRATCH_SOCK" >"$SERVE_LOG" 2>&1 &
SERVE_PID=$!
wait_socket "$SCRATCH_SOCK" "$SERVE_PID" "lsvblk serve --ephemeral" "$SERVE_LOG"
rc=0
run "$QEMU_DIR/run-vm.sh" --socket "$SCRATCH_SOCK" --log "$OUT/ephemeral.log" --timeout "$BOOT_TIMEOUT" \
  --scenario smoke --sectors "$SECTORS" --append "$GEOMETRY" >"$OUT/ephemeral.result" || rc=$?
LAST_LINE=$(cat "$OUT/ephemeral.result")
echo "   $LAST_LINE"
[ "$rc" = 0 ] || { tail -n 30 "$SERVE_LOG" >&2; die "ephemeral: the guest did not PASS (console: $OUT/ephemeral.log)"; }
mapfile -t files < <(find "$SCRATCH" -type f | LC_ALL=C sort)
[ "${#files[@]}" -gt 0 ] || die "no files under $SCRATCH while served"
n=$(plaintext_hits "${files[@]}")
[ "$n" = 0 ] || die "the ephemeral volume's files hold guest plaintext"
pid=$SERVE_PID
SERVE_PID=""
stop_pid "$pid" || die "lsvblk serve --ephemeral did not exit 0 after SIGTERM (log: $SERVE_LOG)"
[ ! -e "$SCRATCH" ] || die "lsvblk serve --ephemeral left $SCRATCH behind after a clean stop"
done_step ephemeral "${LAST_LINE% (*}; 0 plaintext hits; deleted at exit"

step "boots 6-8: a root file system on volumes over one plain base image"
# The base: an ext2 root file system (its own static busybox, its own
# /sbin/init, /etc, /var) in a raw image. Two volumes over it; the first is
# booted, written and rebooted, the second must still see the base as it was.
BASE_ROOT=$TMPD/base-root
mkdir -p "$BASE_ROOT"/{bin,sbin,etc,var,dev,proc,sys,tmp}
cp "$BUSYBOX" "$BASE_ROOT/bin/busybox"
install -m 0755 "$QEMU_DIR/base/init" "$BASE_ROOT/sbin/init"
echo "lsvblk base image v1" >"$BASE_ROOT/etc/base-release"
BASE_IMG=$TMPD/base.raw
mke2fs -q -F -t ext2 -b 4096 -d "$BASE_ROOT" "$BASE_IMG" 64M >"$OUT/mke2fs.log" 2>&1 ||
  { cat "$OUT/mke2fs.log" >&2; die "mke2fs -d (e2fsprogs >= 1.43) failed"; }
base_sum=$(sha256sum <"$BASE_IMG")
for vm in a b; do
  "$LSVBLK" create --volume "$TMPD/vm-$vm" --base "$BASE_IMG" --acl alice --kms "unix:$KMS_SOCK" \
    >"$OUT/create-base-$vm.log" 2>&1 || { cat "$OUT/create-base-$vm.log" >&2; die "lsvblk create --base failed"; }
done
MAIN_VOL=$VOL
VOL=$TMPD/vm-a
start_serve
boot rootfs-first 0 --scenario rootfs --append "lsvblk.phase=first"
stop_serve
start_serve
boot rootfs-again 0 --scenario rootfs --append "lsvblk.phase=again"
stop_serve
VOL=$TMPD/vm-b
start_serve
boot rootfs-pristine 0 --scenario rootfs --append "lsvblk.phase=pristine"
stop_serve
VOL=$MAIN_VOL
[ "$(sha256sum <"$BASE_IMG")" = "$base_sum" ] || die "the base image changed"
n=$(find "$TMPD/vm-a" -type f -exec cat {} + | grep -a -c -F -e "written by the guest" -e "guest-was-here" -e GGGGGGGGGGGGGGGG || true)
[ "$n" = 0 ] || die "the volume over the base holds the guest's writes in the clear"
done_step rootfs "first boot wrote, reboot kept it, a second volume saw the pristine base; base unchanged; 0 plaintext hits"

step "lsvkms audit verify"
audit=$("$LSVKMS" audit verify --dir "$KMS_DIR") || die "lsvkms audit verify: $audit"
done_step audit "$audit"

echo
echo "e2e: PASS in ${SECONDS}s (logs: $OUT)"
printf '  %s\n' "${SUMMARY[@]}"
