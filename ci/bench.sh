#!/usr/bin/env bash
# Runs one benchmark: ci/bench.sh NAME [args for the bench]
#
# NAME is a `[[bench]]` target in Cargo.toml (ci/bench/NAME.rs, harness =
# false, helpers in ci/bench/common/). It is built in release mode and prints a
# table for people and, as its very last line, one JSON object, which it also
# writes to target/bench/NAME.json. Common args: --reps N (repetitions, the
# median is reported), --rep-ms N (length of one repetition), --only TEXT.
# Example: ci/bench.sh crypto --reps 9
#
# A bench that needs cargo features lists them in Cargo.toml, one line in
# [package.metadata.bench-features]: `NAME = ["feature", ...]`; it is built
# with exactly those (e.g. null-cipher for the store and device benches).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: ci/bench.sh NAME [args]" >&2
  echo "benchmarks: $(cd ci/bench && ls -- *.rs | sed 's/\.rs$//' | tr '\n' ' ')" >&2
  exit 2
}

[ $# -ge 1 ] || usage
case "$1" in -h | --help) usage ;; esac
name="$1"
shift
[ -f "ci/bench/$name.rs" ] || { echo "ci/bench.sh: no ci/bench/$name.rs" >&2; usage; }

# The features bench NAME asks for, comma-separated (empty if none).
bench_features() {
  awk -v name="$1" '
    /^\[/ { in_table = ($0 == "[package.metadata.bench-features]"); next }
    in_table && $1 == name && $2 == "=" {
      sub(/^[^=]*=[ \t]*\[/, ""); sub(/\].*$/, ""); gsub(/[" \t]/, ""); print; exit
    }' Cargo.toml
}
features=$(bench_features "$name")
feature_args=()
[ -z "$features" ] || feature_args=(--features "$features")

mkdir -p target/bench
# Build first, so compiler output (on stderr) never lands among the results.
cargo bench --no-run "${feature_args[@]}" --bench "$name"
exec cargo bench --quiet "${feature_args[@]}" --bench "$name" -- "$@"
