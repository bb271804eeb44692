#!/usr/bin/env bash
# The whole check, as CI runs it: install what the tests need, then
# cargo fmt --check, clippy with warnings denied, and every test.
#
#   scripts/test.sh                      everything (CI): every test of every crate,
#                                        the simulation's 200 seeds and its knob tests,
#                                        a benchmark smoke run and the partition suite
#   scripts/test.sh --quick [FILTER...]  fmt, clippy, the unit and crate tests, the
#                                        simulation's 200 seeds, and the e2e tests FILTER
#                                        names (substrings of test names), or else those
#                                        of what this change touches (see e2e_for below)
#
# One debug build serves every stage. The tests run side by side, each in a
# process of its own (scripts/run-tests.py, TEST_JOBS at once, default 8: they
# mostly wait on etcd and timers); the benchmark smoke run and the partition
# suite are jobs of the same pool. Machine-wide names (loopback ranges,
# namespaces) are leased per test (tests/src/lease.rs), so two runs on one
# machine do not collide. A table of each stage's wall time and the ten
# slowest tests ends the output, also when a stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
filters=()
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -*) echo "test.sh: unknown option $a (--quick [FILTER...])" >&2; exit 2 ;;
    *) filters+=("$a") ;;
  esac
done

# A clean clone needs about 7 GiB here (target/ 5 GiB, the Python and Node
# tools, etcd builds). Say so up front instead of failing mid-build.
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
  echo "WARNING: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); a clean run needs about 7 GiB (target/ alone is 5 GiB). Free some space if the build stops with 'No space left on device'." >&2
fi
# A clean clone gains nothing from incremental compilation, and its files
# are 1.8 GiB of target/.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi

names=()
secs=()
began=$(date +%s)
table() {
  local rc=$?
  echo
  echo "== stages (wall time)"
  local i
  for i in "${!names[@]}"; do
    printf '  %-44s %6s s\n' "${names[$i]}" "${secs[$i]}"
  done
  printf '  %-44s %6s s\n' "total" "$(($(date +%s) - began))"
  [ -f target/test-run.log ] && sed -n '/^slowest ten:/,/^[^ ]/p' target/test-run.log | grep -v '^FAILED' || true
  [ $rc = 0 ] || echo "== FAILED (exit $rc)"
}
trap table EXIT
stage() {
  local name=$1
  shift
  echo "== $name"
  local t0
  t0=$(date +%s)
  "$@"
  names+=("$name")
  secs+=("$(($(date +%s) - t0))")
}

setup() { eval "$(scripts/setup.sh)"; }
stage "setup (tools, etcd versions, emulators)" setup
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
stage "build (the one debug build every stage uses)" cargo test --workspace --locked --no-run
previous() {
  PREVIOUS_RELEASE_BIN=$(scripts/previous-release.sh)
  export PREVIOUS_RELEASE_BIN
}
stage "the previous release (rolling-update tests)" previous
images() {
  local names
  mapfile -t names < <(scripts/image.sh --profile debug --tag "test-$(git rev-parse --short=12 HEAD)")
  export IMAGE_SLIM=${names[0]} IMAGE_FULL=${names[1]}
}
export SIM_REAL_SEEDS=${SIM_REAL_SEEDS:-200}

# The e2e tests a change touches: its files against main's newest commit
# that HEAD descends from (or, on main, the uncommitted ones).
e2e_for() {
  local base changed
  base=$(git merge-base HEAD origin/main 2>/dev/null || git rev-parse HEAD)
  changed=$( { git diff --name-only "$base"; git diff --name-only; git ls-files --others --exclude-standard; } | sort -u)
  local out=()
  while read -r f; do
    case "$f" in
      tests/e2e/main.rs) ;;
      tests/e2e/*.rs) out+=("e2e::$(basename "$f" .rs)::") ;;
      gossip/*) out+=(e2e::leadership:: e2e::security:: e2e::rolling::) ;;
      lock/*) out+=(e2e::leadership::) ;;
      core/*) out+=(e2e::walkthrough:: e2e::leadership:: e2e::replace:: e2e::upgrade::patch) ;;
      backup/*) out+=(e2e::drills:: e2e::ctl:: e2e::walkthrough::) ;;
      etcd/*) out+=(e2e::walkthrough:: e2e::upgrade::patch) ;;
      src/platform/volumes/*) out+=(e2e::kops_) ;;
      src/bin/go-runner/*|src/platform/statics.rs) out+=(e2e::kops_metal) ;;
      src/platform/hosts.rs|src/platform/pki.rs) out+=(e2e::security:: e2e::tls:: e2e::kops_metal) ;;
      src/node/upstream_state.rs) out+=(e2e::adopt:: e2e::kops_metal) ;;
      src/backups/pitr.rs|src/backups/delta.rs) out+=(e2e::pitr::) ;;
      src/backups/drill.rs) out+=(e2e::drills::) ;;
      src/*) out+=(e2e::walkthrough:: e2e::leadership:: e2e::replace::) ;;
    esac
  done <<<"$changed"
  printf '%s\n' "${out[@]}" | sort -u
}

pool=(python3 scripts/run-tests.py -j "${TEST_JOBS:-8}")
if [ $quick = 1 ]; then
  if [ ${#filters[@]} = 0 ]; then
    mapfile -t filters < <(e2e_for)
  fi
  args=(--skip "::e2e::")
  for f in "${filters[@]}"; do
    [ -n "$f" ] && args+=(--keep "$f")
  done
  echo "e2e tests: ${filters[*]:-none}"
  stage "tests (crates, simulation, chosen e2e)" "${pool[@]}" "${args[@]}" --log target/test-run.log
  exit 0
fi

stage "the images, from the same build (podman, no registry)" images
args=(--with-ignored real_driver_catches)
args+=(--also "bench smoke (small sizes, proves scripts/bench.sh works)=BENCH_PROFILE=debug scripts/bench.sh --quick p1 p1-loss p2 p4 p5 p7 p7-trickle")
if [ "$(id -u)" = 0 ]; then
  args+=(--also "partition suite, 3 hosts, quick (network namespaces)=scripts/partition-suite.sh --hosts 3 --quick")
elif [ "${CI:-}" = true ]; then
  echo "test.sh: the partition suite needs root (CI=true: a missing tool fails)" >&2
  exit 1
else
  echo "SKIPPED: the partition suite needs root (network namespaces, iptables); run scripts/partition-suite.sh as root"
fi
# The doc tests first (seconds), so the pool's libtest summaries are the
# last "test result:" lines of the run.
stage "doc tests" cargo test --workspace --locked --doc
stage "tests, bench smoke, partition suite (side by side)" "${pool[@]}" "${args[@]}" --log target/test-run.log
