# shellcheck shell=bash
# host-lib.sh - host-side helpers of the qemu/ scripts (lsvkms/lsvblk
# processes, binaries, the volume's on-disk format); sourced after common.sh.
#
# shellcheck disable=SC2034 # LSVBLK, LSVKMS, BIN_HOW are for the caller
# Globals used: RUN_PID (set by `run` while a foreground step runs, for the
# caller's cleanup trap), REPO (repository root).

REPO=$(cd "$QEMU_DIR/.." && pwd)
RUN_PID=""

# exited PID: true once child PID has exited (a zombie, not yet waited for,
# counts as exited; `kill -0` would still succeed on it).
exited() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [ "${stat:0:1}" = Z ]
}

# wait_exit PID SECONDS: waits for child PID to exit; false on timeout.
wait_exit() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    exited "$1" && return 0
    sleep 0.1
  done
  return 1
}

# stop_pid PID: SIGTERM, up to 30 s, then SIGKILL; reaps it and returns its
# exit status.
stop_pid() {
  local rc=0
  kill -TERM "$1" 2>/dev/null || true
  if ! wait_exit "$1" 30; then
    log "pid $1 ignored SIGTERM for 30 s: SIGKILL"
    kill -KILL "$1" 2>/dev/null || true
  fi
  wait "$1" 2>/dev/null || rc=$?
  return "$rc"
}

# run CMD...: runs CMD in the background and waits for it, so that a
# SIGINT/SIGTERM to the script is handled at once (its trap stops RUN_PID).
run() {
  local rc=0
  "$@" &
  RUN_PID=$!
  wait "$RUN_PID" || rc=$?
  RUN_PID=""
  return "$rc"
}

# wait_socket PATH PID NAME LOG: waits until PATH is a socket; dies (showing
# LOG) if PID exits first, or after 30 s.
wait_socket() {
  local i rc=0
  for ((i = 0; i < 300; i++)); do
    [ -S "$1" ] && return 0
    if exited "$2"; then
      wait "$2" || rc=$?
      sed 's/^/  | /' "$4" >&2
      die "$3 exited with status $rc before creating $1"
    fi
    sleep 0.1
  done
  die "$3 did not create $1 in 30 s"
}

# build_binaries: sets LSVBLK and LSVKMS (and BIN_HOW). Uses $LSVBLK_BIN_DIR
# if set, else `cargo build --profile ${LSVBLK_CARGO_PROFILE:-release} --bins`.
build_binaries() {
  local bin profile dir
  if [ -n "${LSVBLK_BIN_DIR:-}" ]; then
    bin=$LSVBLK_BIN_DIR
    BIN_HOW="prebuilt in $bin"
  else
    command -v cargo >/dev/null ||
      die "cargo not found: install Rust >= 1.89 (https://rustup.rs), or set LSVBLK_BIN_DIR to prebuilt binaries"
    profile=${LSVBLK_CARGO_PROFILE:-release}
    run cargo build --manifest-path "$REPO/Cargo.toml" --profile "$profile" --bins --quiet ||
      die "cargo build --profile $profile --bins failed"
    dir=$profile
    [ "$profile" != dev ] || dir=debug
    bin=${CARGO_TARGET_DIR:-$REPO/target}/$dir
    BIN_HOW="cargo build --profile $profile"
  fi
  LSVBLK=$bin/lsvblk
  LSVKMS=$bin/lsvkms
  local b
  for b in "$LSVBLK" "$LSVKMS"; do [ -x "$b" ] || die "no executable $b"; done
}

# json_field NAME JSON: the value of a top-level string or number field of
# the one-line JSON objects lsvblk prints (no jq needed).
json_field() {
  sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" <<<"$2" | head -n1
}

# Text the guest scenarios write: the dd probe sectors, fio pass B's and the
# multi-queue job's patterns, the ext2 files' content (qemu/guest/e2e-lib.sh).
PLAINTEXTS=("LSVBLK-DD" "LSVBLK-B" "LSVBLK-Q" "lsvblk file")

# plaintext_hits FILE...: lines holding any of PLAINTEXTS, all files together.
plaintext_hits() {
  local args=() p
  for p in "${PLAINTEXTS[@]}"; do args+=(-e "$p"); done
  cat "$@" | grep -a -c -F "${args[@]}" || true
}

# probe_sector LBA: one 512-byte dd probe sector as the guest writes it.
probe_sector() {
  awk -v lba="$1" 'BEGIN { l = sprintf("LSVBLK-DD/gen1/lba=%012d\n", lba); for (i = 0; i < 16; i++) printf "%s", l }'
}

# find_block BLOCK SEGMENT...: prints "FILE OFFSET SEQ": where the live copy
# of volume block BLOCK's ciphertext starts, i.e. in the data record with the
# highest sequence number covering it (nothing if a later discard or
# write-zeroes record covers it, or nothing does). Reads segment versions 1
# and 2; layouts: docs/format.md.
find_block() {
  perl -e '
    use strict; use warnings;
    my ($target, @files) = @ARGV;
    my ($best_seq, $best) = (-1, "");
    # note RECORD FILE OFFSET-OF-BLOCK: keeps the newest record covering the target.
    my $note = sub {
      my ($kind, $seq, $lba, $n, $f, $at) = @_;
      return unless $kind != 4 && $target >= $lba && $target < $lba + $n && $seq > $best_seq;
      $best_seq = $seq;
      $best = $kind == 1 ? "$f $at $seq" : "";
    };
    for my $f (@files) {
      open(my $fh, "<:raw", $f) or die "$f: $!\n";
      my $size = -s $f;
      read($fh, my $sh, 64) == 64 or next;
      my ($magic, $version, $segment_id) = unpack("a4 S< x2 Q<", $sh);
      next unless $magic eq "LSVS";
      if ($version == 1) {                            # records after a 64-byte header
        my $off = 64;
        while ($off + 64 <= $size) {
          seek($fh, $off, 0) or die "$f: seek: $!\n";
          read($fh, my $h, 64) == 64 or last;
          last unless substr($h, 0, 4) eq "LSVR";     # torn tail / end
          my ($kind, $seq, $lba, $n, $shift) = unpack("x6 C x Q< Q< L< C", $h);
          my $bs = 1 << $shift;
          $note->($kind, $seq, $lba, $n, $f, $off + 64 + 4 * $n + ($target - $lba) * $bs);
          $off += $kind == 1 ? 64 + 4 * $n + $n * $bs : 64;
        }
      } else {                                        # 4 KiB-aligned frames after a 4 KiB block
        my $off = 4096;
        while ($off + 64 <= $size) {
          seek($fh, $off, 0) or die "$f: seek: $!\n";
          read($fh, my $h, 64) == 64 or last;
          my ($fm, $records, $fid, $foff, $fbytes) = unpack("a4 x2 S< Q< Q< L<", $h);
          last unless $fm eq "LSVF" && $fid == $segment_id && $foff == $off && $fbytes > 0;
          read($fh, my $meta, 64 * $records) == 64 * $records or last;
          for my $i (0 .. $records - 1) {
            my ($kind, $shift, $n, $seq, $lba, $poff) =
              unpack("C x C x L< Q< Q< x16 L<", substr($meta, 64 * $i, 64));
            $note->($kind, $seq, $lba, $n, $f, $off + $poff + ($target - $lba) * (1 << $shift));
          }
          $off += $fbytes;
        }
      }
    }
    print "$best\n" if $best ne "";
  ' "$@"
}

# flip_byte FILE OFFSET: inverts one byte in place.
flip_byte() {
  local b
  b=$(dd if="$1" bs=1 skip="$2" count=1 status=none | od -An -tu1 | tr -d ' ')
  [ -n "$b" ] || die "cannot read byte $2 of $1"
  # shellcheck disable=SC2059 # octal escape built on purpose
  printf "\\$(printf '%03o' $((255 - b)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# kms_start DIR LOGDIR USER...: lsvkms init + serve with its state in DIR/kms
# and its socket at DIR/kms.sock, and a 1 h token per USER in DIR/USER.token.
# Sets KMS_PID and KMS_SOCK (stop it with stop_pid "$KMS_PID").
kms_start() {
  local dir=$1 logs=$2 user
  shift 2
  KMS_SOCK=$dir/kms.sock
  "$LSVKMS" init --dir "$dir/kms" >"$logs/lsvkms-init.log" 2>&1 ||
    { cat "$logs/lsvkms-init.log" >&2; die "lsvkms init failed"; }
  "$LSVKMS" serve --dir "$dir/kms" --socket "$KMS_SOCK" >"$logs/lsvkms.log" 2>&1 &
  KMS_PID=$!
  wait_socket "$KMS_SOCK" "$KMS_PID" "lsvkms serve" "$logs/lsvkms.log"
  for user in "$@"; do
    (umask 077 && "$LSVKMS" token issue --dir "$dir/kms" --user "$user" --ttl 1h >"$dir/$user.token") ||
      die "lsvkms token issue failed"
  done
}

# start_serve [extra lsvblk serve args]: serves $VOL on $SOCK with the
# token in $TOKEN, through lsvkms at $KMS_SOCK, logging to a new
# $OUT/serve-N.log (SERVE_LOG); sets SERVE_PID once the socket is up.
serve_n=0
SERVE_LOG=""
start_serve() {
  serve_n=$((serve_n + 1))
  SERVE_LOG=$OUT/serve-$serve_n.log
  rm -f "$SOCK"
  "$LSVBLK" serve --volume "$VOL" --socket "$SOCK" --kms "unix:$KMS_SOCK" --token-file "$TOKEN" "$@" \
    >"$SERVE_LOG" 2>&1 &
  SERVE_PID=$!
  wait_socket "$SOCK" "$SERVE_PID" "lsvblk serve" "$SERVE_LOG"
}

# stop_serve: SIGTERM to the daemon start_serve started; it must flush,
# close the volume, remove its socket and exit 0.
stop_serve() {
  local rc=0 pid=$SERVE_PID
  SERVE_PID=""
  stop_pid "$pid" || rc=$?
  if [ "$rc" != 0 ]; then
    sed 's/^/  | /' "$SERVE_LOG" >&2
    die "lsvblk serve exited with status $rc after SIGTERM, expected 0 (log: $SERVE_LOG)"
  fi
  grep -q "volume flushed and closed" "$SERVE_LOG" ||
    die "lsvblk serve exited 0 but did not log 'volume flushed and closed' ($SERVE_LOG)"
  [ ! -e "$SOCK" ] || die "lsvblk serve left its socket $SOCK behind"
}

# loop_option ARGS...: if ARGS starts with one of the write-loop scenarios'
# common options (--backend, --boot-timeout, --progress-timeout, --summary,
# --keep, --help), sets its variable and SHIFT to the words it took; else
# SHIFT=0.
loop_option() {
  SHIFT=2
  case $1 in
    --backend) BACKEND=${2:?} ;;
    --boot-timeout) BOOT_TIMEOUT=${2:?} ;;
    --progress-timeout) PROGRESS_TIMEOUT=${2:?} ;;
    --summary) SUMMARY=${2:?} ;;
    --keep) KEEP=1 SHIFT=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) SHIFT=0 ;;
  esac
}

# loop_check_options NUMBER...: dies unless BACKEND is lsvblk or qsd and every
# NUMBER (with BOOT_TIMEOUT and PROGRESS_TIMEOUT) is a whole number.
loop_check_options() {
  local n
  case $BACKEND in lsvblk | qsd) ;; *) die "--backend must be lsvblk or qsd" ;; esac
  for n in "$@" "$BOOT_TIMEOUT" "$PROGRESS_TIMEOUT"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "numbers only: $n"
  done
}

# loop_backend_setup BACKEND DIR LOGDIR SIZE: what the write-loop scenarios
# (restart-test.sh, migrate-test.sh) need before a guest boots: for lsvblk the
# binaries, lsvkms with a token for alice and a volume at DIR/vol; for qsd a raw
# file DIR/disk.raw and QSD (the qemu-storage-daemon binary) with QSD_VERSION;
# then the guest's kernel and initramfs. Sets KMS_PID/KMS_SOCK (lsvblk). The
# array LOOP_CREATE_ARGS, if set, goes to `lsvblk create` (e.g. --store).
loop_backend_setup() {
  local backend=$1 dir=$2 logs=$3 size=$4
  if [ "$backend" = lsvblk ]; then
    build_binaries
    kms_start "$dir" "$logs" alice
    "$LSVBLK" create --volume "$dir/vol" --size "$size" --acl alice --kms "unix:$KMS_SOCK" \
      ${LOOP_CREATE_ARGS[@]+"${LOOP_CREATE_ARGS[@]}"} >"$logs/create.log" 2>&1 || { cat "$logs/create.log" >&2; die "lsvblk create failed"; }
  else
    QSD=${LSVBLK_QSD:-$(command -v qemu-storage-daemon || echo "$QEMU_ROOT/usr/bin/qemu-storage-daemon")}
    truncate -s "$size" "$dir/disk.raw"
  fi
  "$QEMU_DIR/fetch.sh" >"$logs/fetch.log" 2>&1 || { cat "$logs/fetch.log" >&2; die "fetch.sh failed"; }
  "$QEMU_DIR/build-initramfs.sh" >"$logs/initramfs.log" 2>&1 || { cat "$logs/initramfs.log" >&2; die "build-initramfs.sh failed"; }
  if [ "$backend" != lsvblk ]; then
    [ -x "$QSD" ] || die "no qemu-storage-daemon at $QSD"
    QSD_VERSION=$("$QSD" --version | head -n1)
  fi
}

# loop_finish RC: the end of the write-loop scenarios' cleanup, after they
# stopped their guests and backends: stops lsvkms (KMS_PID), removes TMPD
# unless KEEP=1, says where the logs (OUT) are on a failure, exits RC.
loop_finish() {
  local rc=$1
  if [ -n "$KMS_PID" ]; then stop_pid "$KMS_PID" || true; fi
  if [ "$KEEP" = 1 ]; then log "kept $TMPD"; else rm -rf "$TMPD"; fi
  [ "$rc" = 0 ] || log "FAILED (exit $rc) after ${SECONDS}s; logs in $OUT"
  exit "$rc"
}

# loop_traps CLEANUP: CLEANUP runs at exit, SIGINT/SIGTERM exit 130 (through
# it); tools log without colours.
loop_traps() {
  # shellcheck disable=SC2064 # the function's name, now
  trap "$1" EXIT
  trap 'log "interrupted"; exit 130' INT TERM
  export NO_COLOR=1
}

# ms_since T0_NS: milliseconds since T0_NS (date +%s%N).
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# wait_for_line FILE PATTERN SECONDS [PID]: waits until FILE has a line
# matching the extended regex PATTERN; false on timeout, or if PID exits first.
wait_for_line() {
  local i
  for ((i = 0; i < $3 * 20; i++)); do
    grep -a -q -E "$2" "$1" 2>/dev/null && return 0
    if [ -n "${4:-}" ] && exited "$4"; then
      grep -a -q -E "$2" "$1" 2>/dev/null && return 0
      return 1
    fi
    sleep 0.05
  done
  return 1
}

# percentile P VALUES...: the P-th percentile (nearest rank) of integers.
percentile() {
  local p=$1
  shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } r = int((p * NR + 99) / 100); if (r < 1) r = 1; print v[r] }'
}
