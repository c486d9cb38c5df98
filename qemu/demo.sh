#!/usr/bin/env bash
# demo.sh - a narrated tour of lsvblk for a person on a fresh machine:
#   installs what is missing (QEMU, guest kernel, busybox, fio: qemu/fetch.sh;
#   the binaries: cargo build), starts the key service lsvkms and the lsvblk
#   daemon, boots a Linux guest that writes to the encrypted disk, shows the
#   key id and that the files on the host hold no plaintext; then alice lets
#   bob in (lsvkms reseals her key with the new ACL), snapshots the volume
#   while it is served, and a second guest boots on bob's read-only export of
#   the snapshot; mallory (not on the ACL) is refused, with the reason, and
#   the refusal is in lsvkms's audit log; alice lists, with her own token,
#   the key ids whose ACL she is on (never a key).
# Everything runs in a temp dir that is removed at the end (also on Ctrl-C).
#
# Usage: qemu/demo.sh [--pause] [--keep]
#   --pause   wait for Enter before each step (for presenting it live)
#   --keep    keep the temp dir (volume, lsvkms state, tokens, logs)
# Environment: LSVBLK_BIN_DIR (prebuilt lsvblk + lsvkms, no cargo build),
# LSVBLK_CARGO_PROFILE (default release). Needs root for the apt installs
# (fetch.sh) and about 2 minutes.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=SCRIPTDIR/host-lib.sh
. "$QEMU_DIR/host-lib.sh"

PAUSE=0 KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --pause) PAUSE=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B="" G="" R="" N=""; fi
STEP=0
STEPS=10
heading() { # TITLE
  STEP=$((STEP + 1))
  if [ "$PAUSE" = 1 ] && [ -t 0 ]; then read -r -p "   [Enter: step $STEP] " _; fi
  printf '\n%s== Step %d/%d: %s%s\n' "$B" "$STEP" "$STEPS" "$*" "$N"
}
say() { printf '   %s\n' "$*"; }
ok() { printf '   %s%s%s\n' "$G" "$*" "$N"; }
# show CMD...: prints the command as typed, runs it, indents its output.
show() {
  printf '   %s$ %s%s\n' "$B" "$*" "$N"
  "$@" 2>&1 | sed 's/^/     /'
}

DEMO="" KMS_PID="" SERVE_PID=""
cleanup() {
  local rc=$?
  trap - INT TERM
  if [ -n "$RUN_PID" ]; then stop_pid "$RUN_PID" || true; fi
  if [ -n "$SERVE_PID" ]; then stop_pid "$SERVE_PID" || true; fi
  if [ -n "$KMS_PID" ]; then stop_pid "$KMS_PID" || true; fi
  if [ -z "$DEMO" ]; then :; elif [ "$KEEP" = 1 ]; then log "kept $DEMO"; else rm -rf "$DEMO"; fi
  if [ "$rc" = 0 ]; then
    printf '\n%sDemo finished in %ss.%s lsvkms and lsvblk stopped, temp dir %s.\n' "$B" "$SECONDS" "$N" \
      "$([ "$KEEP" = 1 ] && echo "kept: $DEMO" || echo removed)"
  else
    printf '\n%sDemo FAILED (exit %s).%s Processes stopped, temp dir %s.\n' "$R" "$rc" "$N" \
      "$([ "$KEEP" = 1 ] && echo "kept: $DEMO" || echo removed)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
DEMO=$(mktemp -d /tmp/lsvblk-demo.XXXXXX)
cd "$DEMO"
mkdir logs
export NO_COLOR=1

printf '%slsvblk demo%s: encrypted, log-structured virtual disks for VMs (vhost-user-blk),\n' "$B" "$N"
say "with data keys released by the key service lsvkms only to users on a volume's ACL."
say "Working directory: $DEMO (removed at the end)."

# ----------------------------------------------------------------- 1
heading "install and build what is missing"
say "qemu/fetch.sh: a private QEMU (unpacked under qemu/.cache, not installed), the"
say "libraries it needs (apt), a Debian kernel, busybox and fio for the test guest."
run "$QEMU_DIR/fetch.sh" >logs/fetch.log 2>&1 || { cat logs/fetch.log >&2; die "fetch.sh failed"; }
run "$QEMU_DIR/build-initramfs.sh" >logs/initramfs.log 2>&1 || { cat logs/initramfs.log >&2; die "build-initramfs.sh failed"; }
ok "guest ready: $(cat "$KERNEL_DIR/VERSION"), initramfs $(du -h "$INITRD" | cut -f1)"
say "cargo build --release --bins: lsvblk (the daemon and volume tool), lsvkms (the key service)"
build_binaries
ok "binaries: $BIN_HOW"
PATH="$(dirname "$LSVBLK"):$PATH"
export PATH
if ! command -v curl >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  say "installing curl (to query lsvkms's HTTP API in step 9)"
  apt-get install -y -qq --no-install-recommends curl >logs/apt-curl.log 2>&1 ||
    say "(could not install curl; step 9 will read the audit file instead)"
fi

# ----------------------------------------------------------------- 2
heading "start the key service, lsvkms"
say "lsvkms holds the wrapping key (here a 0600 file; PKCS#11/HSM also works). It makes"
say "data keys, seals each with its ACL, and unwraps one only for a user on that ACL,"
say "proven by a token it signed. Every decision goes to a hash-chained audit log."
show lsvkms init --dir kms
lsvkms serve --dir kms --socket "$DEMO/kms.sock" >logs/lsvkms.log 2>&1 &
KMS_PID=$!
wait_socket "$DEMO/kms.sock" "$KMS_PID" "lsvkms serve" logs/lsvkms.log
say "$ lsvkms serve --dir kms --socket kms.sock &"
ok "lsvkms listening on kms.sock (pid $KMS_PID)"

# ----------------------------------------------------------------- 3
heading "tokens for alice, bob and mallory"
for user in alice bob mallory; do
  (umask 077 && lsvkms token issue --dir kms --user "$user" --ttl 1h >"$user.token")
  say "$ lsvkms token issue --dir kms --user $user --ttl 1h > $user.token    ($(cut -c1-24 "$user.token")...)"
done
say "(signed tokens, Ed25519; the user name in them is what ACLs are checked against)"

# ----------------------------------------------------------------- 4
heading "create a 256 MiB volume for alice"
show lsvblk create --volume vol --size 256M --acl alice --kms unix:kms.sock
KEY_ID=$(json_field current_key_id "$(lsvblk inspect --volume vol --json)")
[ -n "$KEY_ID" ] || die "no key id in lsvblk inspect's output"
say "The volume stores only the wrapped (sealed) data key; lsvkms keeps no copy of it."

# ----------------------------------------------------------------- 5
SOCK=$DEMO/vm1.sock
heading "alice serves the volume; a Linux guest writes to it"
say "$ lsvblk serve --volume vol --socket vm1.sock --kms unix:kms.sock --token-file alice.token &"
lsvblk serve --volume vol --socket "$SOCK" --kms unix:kms.sock --token-file alice.token >logs/serve-alice.log 2>&1 &
SERVE_PID=$!
wait_socket "$SOCK" "$SERVE_PID" "lsvblk serve" logs/serve-alice.log
ok "$(grep -m1 ' serving ' logs/serve-alice.log | sed 's/.*INFO //')"

# boot SCENARIO LABEL [run-vm.sh args]: boots the guest on $SOCK and shows its
# progress lines live.
boot() {
  local scenario=$1 label=$2 rc=0 tail_pid
  shift 2
  local console=$DEMO/logs/$label.console
  : >"$console"
  say "$ qemu/run-vm.sh --socket vm1.sock --scenario $scenario --sectors 524288${*:+ $*}"
  "$QEMU_DIR/run-vm.sh" --socket "$SOCK" --scenario "$scenario" --sectors 524288 --log "$console" \
    --timeout 300 "$@" >"logs/$label.result" 2>"logs/$label.stderr" &
  RUN_PID=$!
  tail -n +1 -f --pid="$RUN_PID" "$console" 2>/dev/null |
    grep --line-buffered -a -E '^(lsvblk-e2e:|LSVBLK-E2E:)' | sed -u 's/\r$//; s/^/     guest| /' &
  tail_pid=$!
  wait "$RUN_PID" || rc=$?
  RUN_PID=""
  wait "$tail_pid" || true
  if [ "$rc" != 0 ]; then
    cat "logs/$label.stderr" "logs/$label.result" >&2
    die "the $scenario boot did not PASS (console: $console)"
  fi
  ok "$(cat "logs/$label.result")"
}
say "The guest (Debian kernel, busybox, fio; QEMU with TCG) writes sector patterns"
say "'LSVBLK-DD/gen1/lba=...', fio data and an ext2 file system, then reads all back:"
boot write write
say "While the daemon serves the volume, alice lets bob in and takes a snapshot for him:"
show lsvblk acl set vol --acl alice,bob --kms unix:kms.sock --token-file alice.token
say "(lsvkms sealed the same key again with the new ACL; the next snapshot carries it)"
show lsvblk snapshot create vol for-bob
say "(O(1): the daemon recorded where its log stood; nothing was copied)"
say "SIGTERM to the daemon: it flushes the log, writes a checkpoint, exits 0."
rc=0
stop_pid "$SERVE_PID" || rc=$?
SERVE_PID=""
[ "$rc" = 0 ] || die "lsvblk serve exited $rc after SIGTERM"
ok "lsvblk serve exited 0 ($(tail -n1 logs/serve-alice.log | sed 's/.*INFO [a-z:]*: //'))"

# ----------------------------------------------------------------- 6
heading "what the host sees: key id, and no plaintext"
show lsvblk inspect --volume vol
say "The segment files are the log: 64-byte record headers, block checksums, ciphertext."
show ls -l vol/segments
say "The guest wrote its sector patterns in clear; grep -c counts them in the volume's files:"
mapfile -t files < <(find vol -type f | LC_ALL=C sort)
for f in "${files[@]}"; do
  printf '     %-44s LSVBLK-DD: %s   "lsvblk file": %s\n' "$f" \
    "$(grep -a -c -F LSVBLK-DD "$f" || true)" "$(grep -a -c -F 'lsvblk file' "$f" || true)"
done
total=$(plaintext_hits "${files[@]}")
[ "$total" = 0 ] || die "the volume's files hold guest plaintext ($total hits)"
ok "0 hits: nothing the guest wrote is readable on the host (on a raw disk image, every probe sector would match)"
where=$(find_block 0 vol/segments/*.seg)
if [ -n "$where" ]; then
  read -r seg off _ <<<"$where"
  say "Guest sector 0 as the guest wrote it, and its 4k block as stored in $(basename "$seg") at byte $off:"
  printf '     guest: %s\n' "$(probe_sector 0 | head -c 31)\n  (x16 per sector)"
  probe_sector 0 | od -A n -t x1 -N 32 -w32 | sed 's/^/     guest:/'
  od -A n -t x1 -j "$off" -N 32 -w32 "$seg" | sed 's/^/     host: /'
fi

# ----------------------------------------------------------------- 7
heading "snapshot handoff: bob (on the snapshot's ACL) serves it read-only"
say "$ lsvblk serve --volume vol --snapshot for-bob --read-only --socket vm1.sock --kms unix:kms.sock --token-file bob.token &"
lsvblk serve --volume vol --snapshot for-bob --read-only --socket "$SOCK" --kms unix:kms.sock \
  --token-file bob.token >logs/serve-bob.log 2>&1 &
SERVE_PID=$!
wait_socket "$SOCK" "$SERVE_PID" "lsvblk serve (bob)" logs/serve-bob.log
ok "lsvkms released the key to bob: $(grep -m1 ' serving ' logs/serve-bob.log | sed 's/.*INFO //')"
say "A second guest, on bob's read-only export of the snapshot, checks it cannot write, then"
say "reads back alice's data as it was when the snapshot was taken:"
boot readonly readonly
rc=0
stop_pid "$SERVE_PID" || rc=$?
SERVE_PID=""
[ "$rc" = 0 ] || die "lsvblk serve (bob) exited $rc after SIGTERM"
ok "lsvblk serve (bob) exited 0"

# ----------------------------------------------------------------- 8
heading "mallory (not on the snapshot's ACL) is refused"
say "$ lsvblk serve --volume vol --snapshot for-bob --read-only --socket vm1.sock --kms unix:kms.sock --token-file mallory.token"
rc=0
timeout 30 lsvblk serve --volume vol --snapshot for-bob --read-only --socket "$SOCK" --kms unix:kms.sock --token-file mallory.token \
  >logs/serve-mallory.log 2>&1 || rc=$?
grep -v '^$' logs/serve-mallory.log | sed 's/^/     /'
[ "$rc" = 77 ] || die "lsvblk serve as mallory exited $rc, expected 77 (EX_NOPERM: refused)"
[ ! -e "$SOCK" ] || die "lsvblk serve as mallory created $SOCK"
ok "exit status 77 (EX_NOPERM) before any socket existed: no VM can attach, no key was released"

# ----------------------------------------------------------------- 9
heading "the audit log of lsvkms"
# audit_table: the records (one JSON object each, on stdin) as a table.
audit_table() {
  printf '     %-4s %-24s %-8s %-12s %-8s %s\n' seq time user action decision reason
  sed 's/},{"action"/}\n{"action"/g' | while IFS= read -r rec; do
    [[ "$rec" == *'"seq":'* ]] || continue
    printf '     %-4s %-24s %-8s %-12s %-8s %s\n' "$(json_field seq "$rec")" "$(json_field time "$rec")" \
      "$(json_field user "$rec")" "$(json_field action "$rec")" "$(json_field decision "$rec")" \
      "$(json_field reason "$rec")"
  done
}
if command -v curl >/dev/null; then
  say "$ curl -s --unix-socket kms.sock 'http://lsvkms/v1/audit?key_id=$KEY_ID'"
  curl -sS --unix-socket "$DEMO/kms.sock" "http://lsvkms/v1/audit?key_id=$KEY_ID" >logs/audit.json ||
    die "GET /v1/audit failed"
  table=$(audit_table <logs/audit.json)
else
  say "(no curl: the same records from the audit file, kms/audit.log)"
  table=$(grep -F "\"key_id\":\"$KEY_ID\"" kms/audit.log | audit_table)
fi
echo "$table"
awk '$3 == "mallory" && $4 == "unwrap" && $5 == "deny" && $6 == "not_on_acl" { found = 1 } END { exit !found }' \
  <<<"$table" || die "the audit log does not show mallory's refusal"
ok "mallory's unwrap: deny, not_on_acl; alice's and bob's: allow"
say "The log is a hash chain with a MAC'd head; checking it, and that no key ever reached"
say "a user off its ACL:"
show lsvkms audit verify --dir kms
rc=0
lsvkms audit check --dir kms >logs/audit-check.log 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat logs/audit-check.log >&2; die "lsvkms audit check found unwraps by users off the ACL"; }
say "$ lsvkms audit check --dir kms"
ok "exit 0: no unwrap by a user off a key's ACL"

# ----------------------------------------------------------------- 10
heading "alice lists her key ids"
say "With her own token, alice asks lsvkms which keys she is on the ACL of: ids, volumes,"
say "states, creation times, ACLs. lsvkms answers from its key records (no data key there):"
show lsvkms keys list --socket kms.sock --token-file alice.token
lsvkms keys list --socket kms.sock --token-file alice.token --json >logs/alice-keys.json
grep -q "\"key_id\": \"$KEY_ID\"" logs/alice-keys.json || die "alice's list does not show her key $KEY_ID"
mallory=$(lsvkms keys list --socket kms.sock --token-file mallory.token --json)
[[ "$mallory" == *'"keys": []'* ]] || die "mallory's list is not empty: $mallory"
ok "alice sees key $KEY_ID; mallory, on no ACL, sees none; both listings are audited (key_list)"
