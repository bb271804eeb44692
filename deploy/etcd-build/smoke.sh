#!/usr/bin/env bash
# Smoke-test one installed etcd folder (as deploy/install-etcd.sh leaves it):
#
#   deploy/etcd-build/smoke.sh /opt/etcd-v3.6.16
#
# Starts a single-member etcd on 127.0.0.1 (free ports, temp data dir), puts
# and gets a key, saves a snapshot with etcdctl, restores it with etcdutl
# (--bump-revision 1000000000 --mark-compacted) into a new data dir, starts
# etcd on that and reads the key back, and asks /health (and /livez and
# /readyz from 3.6 on). Cleans up its processes and temp dir. Exits non-zero
# on the first failure, printing the tail of the etcd log.
set -euo pipefail

bin=${1:?usage: $0 /opt/etcd-v<version>}
[ -x "$bin/etcd" ] && [ -x "$bin/etcdctl" ] && [ -x "$bin/etcdutl" ] \
  || { echo "smoke: $bin must hold etcd, etcdctl and etcdutl" >&2; exit 2; }
version=$("$bin/etcd" --version | awk '/^etcd Version:/ {print $3}')
minor=${version%.*}

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" && wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "smoke $version: FAIL: $*" >&2
  [ -f "$tmp/etcd.log" ] && tail -n 15 "$tmp/etcd.log" >&2
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cport=$(free_port)
pport=$(free_port)
[ "$cport" != "$pport" ] || pport=$(free_port)
curl_url=http://127.0.0.1:$cport
peer_url=http://127.0.0.1:$pport
# ETCDCTL_API=3 only where etcdctl knows it: 3.6 dropped it and warns
# "unrecognized environment variable" when it is set.
case "$minor" in
  3.[0-5]) ctl() { ETCDCTL_API=3 "$bin/etcdctl" --endpoints="$curl_url" "$@"; } ;;
  *) ctl() { "$bin/etcdctl" --endpoints="$curl_url" "$@"; } ;;
esac

start_etcd() { # data dir, extra args...
  local dir=$1
  shift
  "$bin/etcd" --name s1 --data-dir "$dir" \
    --listen-client-urls "$curl_url" --advertise-client-urls "$curl_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "s1=$peer_url" "$@" >"$tmp/etcd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || fail "etcd exited while starting"
    ctl endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "etcd did not become healthy in 10s"
}

stop_etcd() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

start_etcd "$tmp/d1" --initial-cluster-state new
ctl put smoke/key "value-$version" >/dev/null || fail "put"
[ "$(ctl get smoke/key --print-value-only)" = "value-$version" ] || fail "get"
ctl snapshot save "$tmp/snap.db" >/dev/null 2>&1 || fail "etcdctl snapshot save"
stop_etcd

"$bin/etcdutl" snapshot restore "$tmp/snap.db" --data-dir "$tmp/d2" \
  --name s1 --initial-cluster "s1=$peer_url" --initial-advertise-peer-urls "$peer_url" \
  --bump-revision 1000000000 --mark-compacted >"$tmp/restore.log" 2>&1 \
  || { cat "$tmp/restore.log" >&2; fail "etcdutl snapshot restore"; }

start_etcd "$tmp/d2"
[ "$(ctl get smoke/key --print-value-only)" = "value-$version" ] || fail "get after restore"
rev=$(ctl get smoke/key -w json | python3 -c 'import json, sys; print(json.load(sys.stdin)["header"]["revision"])')
[ "$rev" -gt 1000000000 ] || fail "revision after --bump-revision is $rev"
ctl get smoke/key --rev 2 >/dev/null 2>&1 && fail "old revision 2 readable after --mark-compacted"

endpoints=(/health)
case "$minor" in 3.[0-5]) ;; *) endpoints+=(/livez /readyz) ;; esac
for e in "${endpoints[@]}"; do
  code=$(curl -s -o "$tmp/body" -w '%{http_code}' "$curl_url$e") || fail "GET $e"
  [ "$code" = 200 ] || fail "GET $e answered $code: $(cat "$tmp/body")"
  echo "smoke $version: GET $e -> $code $(head -c 80 "$tmp/body")"
done
stop_etcd
echo "smoke $version: OK (put/get, etcdctl snapshot save, etcdutl snapshot restore --bump-revision --mark-compacted, restart, get; revision now $rev)"
