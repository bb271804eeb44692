#!/usr/bin/env bash
# The whole check, as CI runs it: install what the tests need, then
# cargo fmt --check, clippy with warnings denied, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# setup.sh prints the environment the tests need (etcd folder, moto on PATH).
eval "$(scripts/setup.sh)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast
echo "== simulation: 1000 seeds (release)"
SIM_SEEDS=${SIM_SEEDS:-1000} cargo test --release --locked -p tests --test sim -- --nocapture
