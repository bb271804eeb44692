#!/usr/bin/env bash
# The partition suite: 3 or 5 hosts in network namespaces (one etcd-manager
# and its etcd each, on a bridge, TLS on), the S3 store (moto) on the root
# side, and the scenarios of the faults issue, each with a client oracle.
#
#   scripts/partition-suite.sh                       every scenario, 3 hosts
#   scripts/partition-suite.sh --hosts 5             every scenario, 5 hosts
#   scripts/partition-suite.sh --quick kill-etcd ...  shorter faults, some scenarios
#   scripts/partition-suite.sh --cleanup             remove leftovers of a killed run
#
# Needs root (namespaces, iptables). Writes target/partition-suite/summary.json
# and summary.md; failing scenarios leave their managers' logs there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "partition-suite: needs root for network namespaces and iptables; run it as root (or with sudo)" >&2
  exit 2
fi
if ! ip netns add "ems-probe-$$" 2>/dev/null; then
  echo "partition-suite: cannot create a network namespace here (ip netns add failed)" >&2
  exit 2
fi
ip netns del "ems-probe-$$"

eval "$(scripts/setup.sh)"
if ! command -v iptables >/dev/null; then
  echo "partition-suite: installing iptables (cuts and packet loss)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null
fi

# As `cargo test --workspace` builds them (with the test crates' features),
# so that after scripts/test.sh's tests nothing is rebuilt.
cargo test --workspace --locked --no-run -q
suite=target/debug/partition-suite
trap '"$suite" --cleanup' EXIT
SUITE_BIN_DIR=target/debug "$suite" "$@"
