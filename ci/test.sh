#!/usr/bin/env bash
# The one test command: formatting, lints, and every test (unit, integration,
# doc). CI runs exactly this (through .ci/run); so should you before a push.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "== cargo test"
cargo test --all-targets
cargo test --doc
