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
# Not here (yet): qemu/migrate-test.sh, the live migrations under the same
# loop. QEMU 7.2 under TCG sometimes migrates this guest into a kernel panic
# right after the switch-over, with qemu-storage-daemon's disk as with
# lsvblk's (3 of 10 migrations on this machine): as a CI stage
# it would fail for QEMU's reasons. Run it by hand (qemu/README.md).
# Environment: LSVBLK_BIN_DIR (prebuilt lsvblk + lsvkms; default: a debug
# build, as ci/test.sh makes), LSVBLK_QSD.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LSVBLK_BIN_DIR:-}" ]; then
  cargo build --bins
  export LSVBLK_BIN_DIR=$PWD/target/debug
fi
summary=$(mktemp /tmp/lsvblk-test-vm.XXXXXX)
trap 'rm -f "$summary"' EXIT

stage() { # NAME COMMAND...: runs one group, prints its wall time
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $*"
  "$@"
  echo "== $name: passed in $((SECONDS - t0)) s"
  echo
}

stage restart-kill qemu/restart-test.sh --backend lsvblk --mode kill --restarts 10 --hold-every 3 --summary "$summary"
stage restart-term qemu/restart-test.sh --backend lsvblk --mode term --restarts 10 --summary "$summary"
stage restart-qsd qemu/restart-test.sh --backend qsd --mode kill --restarts 10 --summary "$summary"

# Side by side: one column per run, one row per figure.
echo "== restarts under a guest's verified write loop: lsvblk and qemu-storage-daemon"
awk '
  { runs++; for (i = 1; i <= NF; i++) { split($i, kv, "="); if (!(kv[1] in seen)) { seen[kv[1]] = 1; keys[++nkeys] = kv[1] } v[runs, kv[1]] = kv[2] } }
  END {
    for (k = 1; k <= nkeys; k++) {
      printf "%-18s", keys[k]
      for (r = 1; r <= runs; r++) printf " %14s", ((r, keys[k]) in v) ? v[r, keys[k]] : "-"
      printf "\n"
    }
  }' "$summary"
echo "test-vm: 3 groups passed in ${SECONDS}s"
