#!/usr/bin/env bash
# Benchmarks against the baselines (see BENCHMARKS.md and issue "Benchmarks
# against the anchors"). Release build; each scenario runs several times and
# reports medians and ratios to a baseline measured in the same run.
#
#   scripts/bench.sh                 every scenario, full size (1 GiB backups: ~15 min)
#   scripts/bench.sh p2 p4           some scenarios
#   scripts/bench.sh --quick         small sizes, one run each: a smoke test
#
# Writes target/bench/results.json and results.md (a run of some scenarios
# replaces those in the last results and keeps the others) and, unless
# --quick, the results in BENCHMARKS.md. BENCH_PROFILE=debug reuses a debug
# build (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/setup.sh)"
command -v gzip >/dev/null || { echo "bench: gzip is needed (apt-get install gzip)" >&2; exit 1; }

profile=${BENCH_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --locked --bins -q
  cargo build --release --locked -p tests --bin bench -q
  dir=target/release
else
  # As `cargo test --workspace` builds them (with the test crates'
  # features), so that after scripts/test.sh's tests nothing is rebuilt.
  cargo test --workspace --locked --no-run -q
  dir=target/debug
fi

quick=0
for a in "$@"; do [ "$a" = --quick ] && quick=1; done
BENCH_BIN_DIR=$dir "$dir/bench" run --out target/bench "$@"

if [ $quick = 0 ]; then
  python3 - <<'PY'
import re
md = open("target/bench/results.md").read()
doc = open("BENCHMARKS.md").read()
start, end = "<!-- results:start -->", "<!-- results:end -->"
new = re.sub(re.escape(start) + ".*?" + re.escape(end), start + "\n" + md + end, doc, flags=re.S)
open("BENCHMARKS.md", "w").write(new)
print("BENCHMARKS.md updated")
PY
fi
