#!/usr/bin/env bash
# Runs ringlb's fuzz targets (fuzz/, cargo-fuzz on libFuzzer) for a time or a number of inputs
# each, and prints how many inputs each target executed. The seed corpora in
# fuzz/corpus/<target> are read, never written: the inputs a run finds go to a scratch
# directory, removed at exit. A crash stops the script with libFuzzer's report; its input is
# left in fuzz/artifacts/<target>/ (add it to the target's corpus once fixed).
#
# Usage: tools/fuzz.sh [SECONDS | -runs=N] [TARGET...]
#   tools/fuzz.sh                      every target for 60 s (what CI runs)
#   tools/fuzz.sh 300 config           the config target for 5 minutes
#   tools/fuzz.sh -runs=10000000       every target for 10 million inputs
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The toolchain is stable: libFuzzer's
# sanitizer flags are nightly-only, so RUSTC_BOOTSTRAP=1 lets stable rustc take them.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then TARGETS=(config proxy_header); fi
case "$LIMIT" in
  -runs=*) FLAG=$LIMIT ;;
  *[!0-9]*|'') echo "usage: tools/fuzz.sh [SECONDS | -runs=N] [TARGET...]" >&2; exit 2 ;;
  *) FLAG=-max_total_time=$LIMIT ;;
esac

command -v cargo-fuzz >/dev/null 2>&1 || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 2; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export RUSTC_BOOTSTRAP=1
for t in "${TARGETS[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  echo "== fuzz target $t ($FLAG)"
  # The first corpus directory takes new inputs; the seeds are only read.
  if ! (cd fuzz && cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- "$FLAG" -print_final_stats=1) >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
  echo "fuzz target $t: ${runs:-?} inputs executed in ${secs:-?} s, no crash"
done
