#!/usr/bin/env bash
# Run every fuzz target (tests/fuzz/, libFuzzer through cargo-fuzz on the
# nightly toolchain) for SECONDS each (default 60), one after another.
#
#   scripts/fuzz.sh [seconds] [target...]
#   FUZZ_RUNS=1000000 scripts/fuzz.sh 900    each until a million executions (at most 900 s)
#
# The ordinary tests also run every target on mutations of its corpus for a
# bounded time (stable toolchain, no coverage guidance): CI's fuzzing.
#
# New corpus entries go to target/fuzz/corpus/<target>/ (the committed seeds
# in tests/fuzz/corpus/<target>/ are read, never written). A crash stops the
# script: its input is in tests/fuzz/artifacts/<target>/; once fixed, copy it
# to tests/fuzz/regressions/<target>/ so the ordinary tests replay it.
# Prints executions and the final coverage per target, and writes them to
# target/fuzz/summary.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls tests/fuzz/fuzz_targets | sed 's/\.rs$//')
fi

die() { echo "fuzz: error: $*" >&2; exit 1; }
command -v rustup >/dev/null 2>&1 || die "rustup is needed (cargo-fuzz runs on the nightly toolchain)"
rustup toolchain list | grep -q '^nightly' \
  || die "no nightly toolchain: run 'rustup toolchain install nightly' (cargo-fuzz needs it for the sanitizer flags)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi

mkdir -p target/fuzz
summary=target/fuzz/summary.tsv
printf 'target\tseconds\texecutions\texec_per_s\tcoverage\n' >"$summary"
for t in "${targets[@]}"; do
  [ -f "tests/fuzz/fuzz_targets/$t.rs" ] || die "no target '$t' (see tests/fuzz/fuzz_targets/)"
  work="target/fuzz/corpus/$t"
  mkdir -p "$work" "tests/fuzz/corpus/$t"
  log="target/fuzz/$t.log"
  echo "fuzz: $t for ${secs}s" >&2
  runs_flag=()
  [ -n "${FUZZ_RUNS:-}" ] && runs_flag=(-runs="$FUZZ_RUNS")
  if ! cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "$work" "tests/fuzz/corpus/$t" -- \
      -max_total_time="$secs" "${runs_flag[@]}" -print_final_stats=1 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "$t crashed or failed; see $log and tests/fuzz/artifacts/$t/"
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -n1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | awk '{print $2}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "${runs:-?}" "${rate:-?}" "${cov:-?}" >>"$summary"
  echo "fuzz: $t: ${runs:-?} executions (${rate:-?}/s), coverage ${cov:-?}" >&2
done
column -t "$summary"
