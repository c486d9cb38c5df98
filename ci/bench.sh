#!/usr/bin/env bash
# Runs one benchmark: ci/bench.sh NAME [args for the bench]
#
# NAME is a `[[bench]]` target in Cargo.toml (ci/bench/NAME.rs, or
# ci/bench/NAME/main.rs with its modules; harness = false; measuring and
# reporting in ci/bench/common/, processes, clients and load generators shared
# with the tests in tests/kit/). It is built in release mode and prints a
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

# Every benchmark: ci/bench/NAME.rs and ci/bench/NAME/main.rs.
benchmarks() {
  local path
  for path in ci/bench/*.rs ci/bench/*/main.rs; do
    [ -f "$path" ] || continue
    path=${path%/main.rs}
    path=${path%.rs}
    printf '%s ' "${path#ci/bench/}"
  done
}

usage() {
  echo "usage: ci/bench.sh NAME [args]" >&2
  echo "benchmarks: $(benchmarks)" >&2
  exit 2
}

[ $# -ge 1 ] || usage
case "$1" in -h | --help) usage ;; esac
name="$1"
shift
[ -f "ci/bench/$name.rs" ] || [ -f "ci/bench/$name/main.rs" ] ||
  { echo "ci/bench.sh: no ci/bench/$name.rs or ci/bench/$name/main.rs" >&2; usage; }

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
