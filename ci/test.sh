#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test (unit, property,
# crash, integration with real lsvkms/lsvblk processes and libblkio, doc),
# then the QEMU end-to-end test (a real Linux guest under TCG writing to an
# encrypted lsvblk disk) and the long QEMU stage ci/test-vm.sh (the daemon
# restarted under a guest's verified write loop). CI runs exactly this
# (through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "== cargo test (library, binaries, tests/)"
cargo test --lib --bins --tests
echo "== cargo test --doc"
cargo test --doc

echo "== QEMU end-to-end: qemu/e2e.sh"
cargo build --bins
LSVBLK_BIN_DIR="$PWD/target/debug" qemu/e2e.sh
echo "qemu-e2e: 1 passed, 0 failed"

# The long QEMU stage (restarts under a guest's write loop, lsvblk next to
# qemu-storage-daemon): its own script, so CI can also run it as a stage of
# its own.
echo "== QEMU restarts: ci/test-vm.sh"
LSVBLK_BIN_DIR="$PWD/target/debug" ci/test-vm.sh
