#!/usr/bin/env bash
# The long QEMU stage of CI (ci/test.sh runs it last; it can also run on its
# own, e.g. as a separate CI job): real Linux guests under TCG running a
# verified write loop while their disk's backend is restarted or migrated.
#   1. lsvblk, 10 x kill -9 + restart, every 3rd with one request held back
#      while later ones complete (the test-only hook): 0 guest I/O errors,
#      every round's read-back verified                    (~1.5-2 min)
#   2. lsvblk, 10 x SIGTERM + restart                       (~1.5 min)
#   3. qemu-storage-daemon, 10 x kill -9 + restart: the reference, printed
#      next to lsvblk's                                      (~1.5 min)
#   4. lsvblk, 10 live migrations back and forth between two QEMUs during
#      the verified loop, each with requests in flight (half a second into a
#      round), the last destination's rounds verifying what the sources
#      wrote                                                 (~1.5-2.5 min)
#   5. qemu-storage-daemon, the same 10 migrations: the reference (~2 min)
# The migrations run on QEMU 10 (LSVBLK_QEMU=10, Debian 12's backports):
# QEMU 7.2's TCG loses guest stores while it migrates, which crashes or hangs
# a guest migrated with I/O in flight, with either backend (qemu/README.md,
# "Live migration under TCG"). Each group runs under a time limit
# (GROUP_LIMIT_S, default 600 s).
# Environment: LSVBLK_BIN_DIR (prebuilt lsvblk + lsvkms; default: a debug
# build, as ci/test.sh makes), LSVBLK_QSD.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LSVBLK_BIN_DIR:-}" ]; then
  cargo build --bins
  export LSVBLK_BIN_DIR=$PWD/target/debug
fi
summary=$(mktemp /tmp/lsvblk-test-vm.XXXXXX)
migrations=$(mktemp /tmp/lsvblk-test-vm.XXXXXX)
trap 'rm -f "$summary" "$migrations"' EXIT
limit=${GROUP_LIMIT_S:-600}

stage() { # NAME COMMAND...: runs one group, prints its wall time
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*"
  timeout --kill-after=20 "$limit" "$@" || {
    local rc=$?
    [ "$rc" != 124 ] || echo "== $name: still running after ${limit}s: stopped"
    return "$rc"
  }
  echo "== $name: passed in $((SECONDS - t0)) s"
  echo
}

stage restart-kill qemu/restart-test.sh --backend lsvblk --mode kill --restarts 10 --hold-every 3 --summary "$summary"
stage restart-term qemu/restart-test.sh --backend lsvblk --mode term --restarts 10 --summary "$summary"
stage restart-qsd qemu/restart-test.sh --backend qsd --mode kill --restarts 10 --summary "$summary"
stage migrate-lsvblk env LSVBLK_QEMU=10 qemu/migrate-test.sh --backend lsvblk --migrations 10 --summary "$migrations"
stage migrate-qsd env LSVBLK_QEMU=10 qemu/migrate-test.sh --backend qsd --migrations 10 --summary "$migrations"

# side_by_side FILE: one column per run, one row per figure.
side_by_side() {
  awk '
  { runs++; for (i = 1; i <= NF; i++) { split($i, kv, "="); if (!(kv[1] in seen)) { seen[kv[1]] = 1; keys[++nkeys] = kv[1] } v[runs, kv[1]] = kv[2] } }
  END {
    for (k = 1; k <= nkeys; k++) {
      printf "%-18s", keys[k]
      for (r = 1; r <= runs; r++) printf " %14s", ((r, keys[k]) in v) ? v[r, keys[k]] : "-"
      printf "\n"
    }
  }' "$1"
}
echo "== restarts under a guest's verified write loop: lsvblk and qemu-storage-daemon"
side_by_side "$summary"
echo
echo "== live migrations under a guest's verified write loop: lsvblk and qemu-storage-daemon"
side_by_side "$migrations"
echo "test-vm: 5 groups passed in ${SECONDS}s"
