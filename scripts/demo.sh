#!/usr/bin/env bash
# A local three-node etcd 3.6.16 cluster run by three etcd-manager processes on
# 127.0.0.1, .2 and .3, with a file backup store and TLS everywhere (CAs made
# by etcd-manager-ctl init-pki). Stays in the foreground; Ctrl-C stops
# everything (managers and etcd).
#
#   scripts/demo.sh                 (state in /tmp/etcd-manager-demo, wiped at start)
#   DEMO_DIR=/some/dir scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

eval "$(scripts/setup.sh --demo)"
echo "== building etcd-manager"
cargo build --bins --locked -q
bin=$root/target/debug

dir=${DEMO_DIR:-/tmp/etcd-manager-demo}
rm -rf "$dir"
mkdir -p "$dir"
store="file://$dir/backups/test"
etcdctl=""
for d in ${ETCD_MANAGER_ETCD_BIN_DIR:-} /opt; do
  [ -x "$d/etcd-v3.6.16/etcdctl" ] && etcdctl="$d/etcd-v3.6.16/etcdctl" && break
done

pids=()
stop() {
  local rc=$1
  trap - INT TERM EXIT
  echo
  echo "== stopping the managers (each stops its etcd)"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if pgrep -f "$dir/data/" >/dev/null 2>&1; then
    echo "some etcd processes are still running:"; pgrep -af "$dir/data/" || true
    exit 1
  fi
  echo "all stopped; state is kept in $dir"
  exit "$rc"
}
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

pki=$dir/pki
"$bin/etcd-manager-ctl" -pki-dir="$pki" init-pki >/dev/null
"$bin/etcd-manager-ctl" -pki-dir="$pki" issue-client-cert "$dir/client" >/dev/null
tls="--cacert=$dir/client/ca.crt --cert=$dir/client/client.crt --key=$dir/client/client.key"

for i in 1 2 3; do
  ip=127.0.0.$i
  "$bin/etcd-manager" --pki-dir="$pki" --address "$ip" --etcd-address "$ip" \
    --cluster-name=test --backup-store="$store" --data-dir="$dir/data/$i" \
    --client-urls="https://$ip:4001" --quarantine-client-urls="https://$ip:8001" \
    --peer-urls="https://$ip:2380" --discovery-dir="$dir/discovery" \
    --backup-interval=1m --metrics-address="$ip:9090" \
    >"$dir/manager-$i.log" 2>&1 &
  pids+=($!)
done
echo "== three managers started (logs: $dir/manager-{1,2,3}.log)"

"$bin/etcd-manager-ctl" -backup-store="$store" -member-count=3 -etcd-version=3.6.16 configure-cluster

endpoints=https://127.0.0.1:4001,https://127.0.0.2:4001,https://127.0.0.3:4001
deadline=$((SECONDS + 120))
# shellcheck disable=SC2086 # $tls is three flags
until ETCDCTL_API=3 "$etcdctl" $tls --endpoints="$endpoints" --command-timeout=2s endpoint health >/dev/null 2>&1 \
  && [ "$(ETCDCTL_API=3 "$etcdctl" $tls --endpoints="$endpoints" member list 2>/dev/null | grep -c ', started, ')" = 3 ]; do
  if [ $SECONDS -gt $deadline ]; then
    echo "the cluster did not become healthy within 120 s; see $dir/manager-*.log" >&2
    exit 1
  fi
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "a manager exited; see $dir/manager-*.log" >&2; exit 1; }
  done
  sleep 1
done

cat <<MSG

== etcd 3.6.16 is running on three members, managed by etcd-manager,
   with TLS between managers, between members and for clients.

Try it (a client certificate from etcd-clients-ca is in $dir/client):
  export ETCDCTL_API=3
  $etcdctl $tls --endpoints=$endpoints member list -w table
  $etcdctl $tls --endpoints=$endpoints put /hello world
  $etcdctl $tls --endpoints=https://127.0.0.2:4001 get /hello
Without the certificate etcd refuses:
  $etcdctl --endpoints=https://127.0.0.2:4001 --insecure-skip-tls-verify --command-timeout=3s get /hello

The desired state and backups (one a minute) live in the store:
  $bin/etcd-manager-ctl -backup-store=$store get
  $bin/etcd-manager-ctl -backup-store=$store list-backups
  ls -R $dir/backups/test

Metrics: curl -s http://127.0.0.1:9090/metrics | grep etcd_manager_
Data dirs: $dir/data/{1,2,3}   Logs: $dir/manager-{1,2,3}.log

Press Ctrl-C to stop everything.
MSG
wait "${pids[@]}"
