#!/usr/bin/env bash
# Runs one benchmark: ci/bench.sh NAME [args for the bench]
#
# NAME is a `[[bench]]` target in Cargo.toml (benches/NAME.rs, harness =
# false, helpers in benches/common/). It is built in release mode and prints a
# table for people and, as its very last line, one JSON object, which it also
# writes to target/bench/NAME.json. Common args: --reps N (repetitions, the
# median is reported), --rep-ms N (length of one repetition), --only TEXT.
# Example: ci/bench.sh crypto --reps 9
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: ci/bench.sh NAME [args]" >&2
  echo "benchmarks: $(cd benches && ls -- *.rs | sed 's/\.rs$//' | tr '\n' ' ')" >&2
  exit 2
}

[ $# -ge 1 ] || usage
case "$1" in -h | --help) usage ;; esac
name="$1"
shift
[ -f "benches/$name.rs" ] || { echo "ci/bench.sh: no benches/$name.rs" >&2; usage; }

mkdir -p target/bench
# Build first, so compiler output (on stderr) never lands among the results.
cargo bench --no-run --bench "$name"
exec cargo bench --quiet --bench "$name" -- "$@"
