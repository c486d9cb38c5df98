#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test (unit, property,
# crash, integration with real lsvkms/lsvblk processes and libblkio, doc),
# the object-store tests against a real Ceph cluster (ci/ceph.sh), then the
# QEMU end-to-end test (a real Linux guest under TCG writing to an
# encrypted lsvblk disk), the same guest under libvirt, and the long QEMU
# stage ci/test-vm.sh (the daemon restarted under a guest's verified write
# loop). CI runs exactly this (through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# One build from scratch: incremental compilation would only add gigabytes of
# cache that this run never reuses (set CARGO_INCREMENTAL=1 to keep it).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# Integration tests (cargo's: tests/NAME.rs and tests/NAME/main.rs) named
# *_s3 need the Ceph cluster: they run in their own stage below; every other
# one runs here.
plain_tests=()
s3_tests=()
for file in tests/*.rs tests/*/main.rs; do
  name=${file#tests/}
  name=${name%/main.rs}
  name=${name%.rs}
  case "$name" in
    *_s3) s3_tests+=(--test "$name") ;;
    *) plain_tests+=(--test "$name") ;;
  esac
done

echo "== cargo test (library, binaries, tests/ except *_s3)"
cargo test --lib --bins "${plain_tests[@]}"
echo "== cargo test --doc"
cargo test --doc

# A real Ceph cluster (three OSDs, radosgw on 127.0.0.1:7480) for the
# object-store tests: `ci/ceph.sh use` installs Ceph's Debian packages when
# missing (~1.5 min), starts the cluster (~15 s), runs the tests (~1 min) and
# stops it again, also when they fail (unless it was already running for
# someone else).
# With the cluster up, also three QEMU live migrations of a volume kept in
# it between two daemons with directories of their own, as on two hosts
# (the hand-over through the bucket; ~45 s).
echo "== object stores on a real Ceph cluster: ci/ceph.sh use cargo test ${s3_tests[*]}; qemu/migrate-test.sh --s3"
cargo test --no-run "${s3_tests[@]}"
cargo build --bins
stage_started=$SECONDS
# shellcheck disable=SC2016 # expanded by the inner bash
ci/ceph.sh use bash -c 'cargo test "$@" &&
  LSVBLK_BIN_DIR="$PWD/target/debug" LSVBLK_QEMU=10 timeout 600 \
    qemu/migrate-test.sh --backend lsvblk --s3 --migrations 3' s3-stage "${s3_tests[@]}"
echo "(object-store stage: $((SECONDS - stage_started)) s with the cluster's start and stop)"

echo "== QEMU end-to-end: qemu/e2e.sh"
cargo build --bins
LSVBLK_BIN_DIR="$PWD/target/debug" qemu/e2e.sh
echo "qemu-e2e: 1 passed, 0 failed"

# The same write/verify boots under libvirt (virt-qemu-run, the domain of
# qemu/libvirt/domain.xml): ~3 min on a quiet machine.
echo "== libvirt: qemu/libvirt.sh"
LSVBLK_BIN_DIR="$PWD/target/debug" qemu/libvirt.sh
echo "libvirt: 1 passed, 0 failed"

# The long QEMU stage (restarts under a guest's write loop, lsvblk next to
# qemu-storage-daemon): its own script, so CI can also run it as a stage of
# its own.
echo "== QEMU restarts: ci/test-vm.sh"
LSVBLK_BIN_DIR="$PWD/target/debug" ci/test-vm.sh
