# shellcheck shell=sh
# e2e-lib.sh - helpers for the guest scenarios (installed as /lib/lsvblk-e2e.sh in
# the initramfs, sourced by /scenarios/*.sh; busybox ash, there is no bash in the
# guest).
#
# Disk layout used by the write / verify scenarios (disk >= 160 MiB):
#   [0, 64 MiB)        dd probes: sector patterns at odd offsets and lengths
#   [64, 96 MiB)       fio "overwrite" region: pass A (16k random data, crc32c)
#                      then pass B (4k, offset-tagged pattern "LSVBLK-B"%o) over
#                      every block; verify expects B everywhere, so a stale A
#                      block, a misplaced block or a flipped bit is an error
#   [96, 112 MiB)      fio "random" region: 64k random data with crc32c headers
#   [128, 144 MiB)     ext2 filesystem (busybox mke2fs on loop at offset 128 MiB)
#                      with files of known content
#   last 100 KiB       dd probes at the end of the disk (last sector included)
#
# Results: a scenario exits 0 for PASS; on failure it calls fail (which records
# the reason for /init), or collects several problems and calls finish.

# shellcheck disable=SC3040 # busybox ash has pipefail
set -o pipefail

DISK=/dev/vda
MIB=1048576
MIN_SECTORS=327680 # 160 MiB
FIO_OW_OFF=$((64 * MIB))
FIO_OW_SIZE=$((32 * MIB))
FIO_RND_OFF=$((96 * MIB))
FIO_RND_SIZE=$((16 * MIB))
FS_OFF=$((128 * MIB))
FS_KIB=16384
FIO_LOG=/tmp/fio.log

say() { echo "lsvblk-e2e: [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
fail() {
  echo "$*" >/tmp/lsvblk-fail-reason
  say "FAIL: $*"
  exit 1
}
PROBLEMS=""
problem() {
  say "PROBLEM: $*"
  PROBLEMS="${PROBLEMS:+$PROBLEMS; }$*"
}
finish() {
  [ -z "$PROBLEMS" ] || fail "$PROBLEMS"
  say "all checks passed"
}

wait_disk() {
  i=0
  while [ ! -b "$DISK" ] || [ ! -e /sys/block/vda/size ]; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "no $DISK after 10 s (vhost-user-blk device missing?)"
    sleep 0.1
  done
}

# Sets SECTORS; checks it against lsvblk.sectors when given.
check_size() {
  wait_disk
  SECTORS=$(cat /sys/block/vda/size)
  if [ -n "${LSVBLK_SECTORS:-}" ]; then
    [ "$SECTORS" = "$LSVBLK_SECTORS" ] ||
      fail "size: /sys/block/vda/size is $SECTORS, expected $LSVBLK_SECTORS"
    say "size ok: $SECTORS sectors ($((SECTORS / 2048)) MiB)"
  else
    say "size $SECTORS sectors (not checked: no lsvblk.sectors)"
  fi
  say "queue: logical_block_size=$(cat /sys/block/vda/queue/logical_block_size)" \
    "physical_block_size=$(cat /sys/block/vda/queue/physical_block_size)" \
    "write_cache=$(cat /sys/block/vda/queue/write_cache)" \
    "ro=$(cat /sys/block/vda/ro) hw_queues=$(hw_queues)"
  # Optional expectations from the command line: lsvblk.lbs=BYTES (logical
  # block size), lsvblk.wc=wb|wt (write back = the device offers flush).
  if [ -n "${LSVBLK_LBS:-}" ]; then
    lbs=$(cat /sys/block/vda/queue/logical_block_size)
    [ "$lbs" = "$LSVBLK_LBS" ] || fail "logical block size is $lbs, expected $LSVBLK_LBS"
  fi
  if [ -n "${LSVBLK_WC:-}" ]; then
    case $(cat /sys/block/vda/queue/write_cache) in "write back") wc=wb ;; *) wc=wt ;; esac
    [ "$wc" = "$LSVBLK_WC" ] || fail "write cache mode is $wc, expected $LSVBLK_WC"
  fi
}

hw_queues() {
  set -- /sys/block/vda/mq/*
  echo "$#"
}

# With lsvblk.queues=Q: the guest must see min(Q, cpus) blk-mq hardware queues.
check_queues() {
  [ -n "${LSVBLK_QUEUES:-}" ] || return 0
  want=$LSVBLK_QUEUES
  [ "$(nproc)" -ge "$want" ] || want=$(nproc)
  have=$(hw_queues)
  [ "$have" = "$want" ] || fail "queues: guest has $have hw queues, expected $want (num-queues=$LSVBLK_QUEUES, $(nproc) cpus)"
  say "queues ok: $have"
}

need_layout() {
  [ "$SECTORS" -ge "$MIN_SECTORS" ] ||
    fail "disk too small for this scenario: $SECTORS sectors, need >= $MIN_SECTORS (160 MiB)"
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# ---------------------------------------------------------------- dd probes
# "LBA COUNT" lines: sector ranges at awkward places (sector 0, unaligned
# starts and lengths, a 1 MiB and a 32 MiB boundary crossed, the last sector).
dd_probes() {
  cat <<PROBES
0 1
1 1
7 1
8 8
2047 2
40000 123
65535 17
$((SECTORS - 1)) 1
$((SECTORS - 9)) 8
$((SECTORS - 200)) 64
PROBES
}

# COUNT sectors of pattern for LBA.., generation TAG (4 characters): every
# 512-byte sector is 16 copies of the 32-byte line "LSVBLK-DD/TAG/lba=NNNNNNNNNNNN\n".
pattern() {
  awk -v lba="$1" -v n="$2" -v tag="$3" 'BEGIN {
    for (i = 0; i < n; i++) {
      l = sprintf("LSVBLK-DD/%s/lba=%012.0f\n", tag, lba + i)
      printf "%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s", l, l, l, l, l, l, l, l, l, l, l, l, l, l, l, l
    }
  }'
}

dd_write_all() { # TAG
  n=0
  while read -r lba count; do
    pattern "$lba" "$count" "$1" >/tmp/pat
    [ "$(wc -c </tmp/pat)" = $((count * 512)) ] || fail "internal: pattern size"
    dd if=/tmp/pat of="$DISK" bs=512 seek="$lba" count="$count" conv=notrunc,fsync 2>/tmp/dd.err ||
      fail "dd write lba $lba+$count: $(tail -n1 /tmp/dd.err)"
    n=$((n + count))
  done <<EOF
$(dd_probes)
EOF
  say "dd: wrote $n sectors of pattern $1 at $(dd_probes | wc -l) places"
}

dd_check_all() { # TAG ; reports problems, does not stop
  # Buffered reads after dropping the page cache (not O_DIRECT: 512-byte
  # direct reads fail on a disk with 4k logical blocks).
  drop_caches
  bad=""
  n=0
  while read -r lba count; do
    want=$(pattern "$lba" "$count" "$1" | sha256sum | cut -d' ' -f1)
    have=$(dd if="$DISK" bs=512 skip="$lba" count="$count" 2>/tmp/dd.err | sha256sum | cut -d' ' -f1) ||
      { bad="$bad lba$lba(read error: $(tail -n1 /tmp/dd.err))"; continue; }
    [ "$have" = "$want" ] || bad="$bad lba$lba+$count"
    n=$((n + count))
  done <<EOF
$(dd_probes)
EOF
  if [ -n "$bad" ]; then
    problem "dd pattern $1 mismatch at$bad"
  else
    say "dd: pattern $1 ok at $(dd_probes | wc -l) places ($n sectors)"
  fi
}

# ---------------------------------------------------------------------- fio
fio_run() { # NAME ARGS... ; returns fio's status, output in $FIO_LOG
  name=$1
  shift
  t0=$(cut -d' ' -f1 /proc/uptime)
  if fio --name="$name" --filename="$DISK" --thread --direct=1 --ioengine=psync \
    "$@" >"$FIO_LOG" 2>&1; then
    say "fio $name ok ($(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.1f", b-a}')s)"
  else
    rc=$?
    grep -iE 'verify|error|err=' "$FIO_LOG" | head -n 5 | sed 's/^/  fio: /'
    return "$rc"
  fi
}
# The job definitions; write and verify must use the same ones.
OW_A="--rw=randwrite --bs=16k --offset=$FIO_OW_OFF --size=$FIO_OW_SIZE --randseed=1111 --verify=crc32c"
OW_B="--rw=randwrite --bs=4k --offset=$FIO_OW_OFF --size=$FIO_OW_SIZE --randseed=2222 --verify=pattern"
OW_B_PATTERN='"LSVBLK-B"%o'
RND="--rw=randwrite --bs=64k --offset=$FIO_RND_OFF --size=$FIO_RND_SIZE --randseed=3333 --verify=crc32c"

fio_write_all() {
  # shellcheck disable=SC2086 # word splitting of the job definitions is wanted
  {
    fio_run ow-a $OW_A --do_verify=1 || fail "fio pass A (random data, crc32c) failed"
    fio_run ow-b $OW_B --verify_pattern="$OW_B_PATTERN" --do_verify=1 || fail "fio pass B (overwrite, pattern) failed"
    fio_run rnd $RND --do_verify=1 || fail "fio random region (64k, crc32c) failed"
  }
}
fio_check_all() { # reports problems, does not stop
  # shellcheck disable=SC2086
  {
    fio_run ow-b-verify $OW_B --verify_pattern="$OW_B_PATTERN" --verify_only ||
      problem "fio verify of overwrite region failed (stale, misplaced or corrupt 4k block)"
    fio_run rnd-verify $RND --verify_only || problem "fio verify of random region failed"
  }
}

# ------------------------------------------------------------- filesystem
# Files of known content: "NAME SIZE" lines; content = the line
# "lsvblk file NAME" repeated, cut to SIZE bytes.
fs_files() {
  cat <<FILES
empty 0
one 1
small 100
page-minus-1 4095
page 4096
odd 12345
dir1/nested 70000
dir1/dir2/big $((1 * MIB + 7))
FILES
}
file_content() {
  awk -v s="lsvblk file $1" -v n="$2" 'BEGIN {
    s = s "\n"; l = length(s); full = int(n / l)
    for (i = 0; i < full; i++) printf "%s", s
    printf "%s", substr(s, 1, n - full * l)
  }'
}

fs_attach() { # [-r]
  LOOP=/dev/loop0
  losetup "$@" -o "$FS_OFF" "$LOOP" "$DISK" || fail "losetup at offset $FS_OFF failed"
}
fs_detach() { losetup -d "$LOOP" || true; }

fs_make() {
  fs_attach
  mke2fs -F -b 1024 -L lsvblk-e2e "$LOOP" "$FS_KIB" >/tmp/mke2fs.log 2>&1 ||
    fail "mke2fs: $(tail -n1 /tmp/mke2fs.log)"
  mount -t ext2 "$LOOP" /mnt || fail "mount of new ext2 failed"
  while read -r name size; do
    mkdir -p "/mnt/$(dirname "$name")"
    file_content "$name" "$size" >"/mnt/$name"
  done <<EOF
$(fs_files)
EOF
  ln -s dir1/dir2/big /mnt/link-to-big
  (cd /mnt && fs_files | while read -r name _; do sha256sum "$name"; done >/mnt/SHA256SUMS)
  umount /mnt || fail "umount failed"
  fs_detach
  say "fs: ext2 at $((FS_OFF / MIB)) MiB with $(fs_files | wc -l) files"
}

fs_check() { # reports problems, does not stop
  fs_attach -r
  if ! mount -t ext2 -o ro "$LOOP" /mnt 2>/tmp/mount.err; then
    problem "fs: mount failed: $(tail -n1 /tmp/mount.err)"
    fs_detach
    return 0
  fi
  bad=""
  while read -r name size; do
    want=$(file_content "$name" "$size" | sha256sum | cut -d' ' -f1)
    have=$(sha256sum "/mnt/$name" 2>/dev/null | cut -d' ' -f1) || have=missing
    [ "$have" = "$want" ] || bad="$bad $name"
  done <<EOF
$(fs_files)
EOF
  (cd /mnt && sha256sum -c -s SHA256SUMS) || bad="$bad SHA256SUMS"
  [ "$(readlink /mnt/link-to-big)" = dir1/dir2/big ] || bad="$bad link-to-big"
  umount /mnt || true
  fs_detach
  if [ -n "$bad" ]; then
    problem "fs: wrong content:$bad"
  else
    say "fs: $(fs_files | wc -l) files, SHA256SUMS and symlink ok"
  fi
}
