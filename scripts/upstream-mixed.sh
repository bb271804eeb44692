#!/usr/bin/env bash
# The rolling move from upstream's etcd-manager to ours, and going back from
# a cluster ours made to upstream's, with upstream's own binary
# (tests/e2e/mixed.rs). Upstream's module is not served by the Go
# module proxy, so this needs upstream's source tree (with its vendor/
# folder): a checkout of kubernetes-sigs/etcd-manager, tag v3.0.20260707.
#
#   scripts/upstream-mixed.sh /path/to/etcd-manager-source
#
# Builds upstream's etcd-manager and etcd-manager-ctl into
# target/upstream/ (rebuilt only when the source's go.sum or version
# changes), then runs the ignored e2e test. Needs root (mount namespaces),
# Go, and etcd 3.5.30 in /opt/etcd-v3.5.30 (deploy/install-etcd.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-${UPSTREAM_SRC:-}}
if [ -z "$src" ] || [ ! -f "$src/cmd/etcd-manager/main.go" ]; then
  echo "usage: $0 <upstream etcd-manager source tree> (or UPSTREAM_SRC): no cmd/etcd-manager/main.go in '${src}'" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "$0 needs root: upstream's managers run in mount namespaces of their own" >&2
  exit 2
fi
out=target/upstream
mkdir -p "$out"
stamp=$( (cat "$src/go.sum" "$src/version.txt" 2>/dev/null; go version) | sha256sum | cut -c1-16)
if [ ! -x "$out/etcd-manager" ] || [ "$(cat "$out/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "== building upstream's etcd-manager from $src"
  mod=mod
  [ -d "$src/vendor" ] && mod=vendor
  (cd "$src" && go build -mod=$mod -o "$OLDPWD/$out/etcd-manager" ./cmd/etcd-manager \
    && go build -mod=$mod -o "$OLDPWD/$out/etcd-manager-ctl" ./cmd/etcd-manager-ctl)
  echo "$stamp" > "$out/stamp"
fi
eval "$(scripts/setup.sh)"
export UPSTREAM_ETCD_MANAGER=$PWD/$out/etcd-manager
export UPSTREAM_ETCD_MANAGER_CTL=$PWD/$out/etcd-manager-ctl
exec cargo test --locked --test e2e mixed -- --ignored --nocapture --test-threads=1
