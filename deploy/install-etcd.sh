#!/usr/bin/env bash
# Install etcd release binaries from Debian's packages into <prefix>/etcd-v<version>/.
#
#   deploy/install-etcd.sh [--prefix DIR] VERSION...
#   deploy/install-etcd.sh --all            # every version we know how to get
#
# Versions Debian carries (suite, package version):
#   3.3.25 bullseye, 3.4.23 bookworm, 3.5.16 trixie, 3.5.30 sid
#
# The packages are fetched with a private apt configuration (its own sources
# list and lists folder under the cache dir), pointing at the same Debian
# mirror this machine already uses, so the machine's own apt setup is never
# touched. Idempotent: a version whose `etcd --version` already answers is
# skipped. Works without root as long as the prefix is writable.
set -euo pipefail

prog=$(basename "$0")
prefix=/opt
versions=()
all_versions=(3.3.25 3.4.23 3.5.16 3.5.30)

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "$prog: error: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --all) versions+=("${all_versions[@]}"); shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) versions+=("$1"); shift ;;
  esac
done
[ ${#versions[@]} -gt 0 ] || die "name at least one version, e.g. '$prog 3.5.30', or --all"

suite_for() {
  case "$1" in
    3.3.25) echo bullseye ;;
    3.4.23) echo bookworm ;;
    3.5.16) echo trixie ;;
    3.5.30) echo sid ;;
    *) return 1 ;;
  esac
}

installed() {
  local dir=$1 version=$2
  [ -x "$dir/etcd" ] && "$dir/etcd" --version 2>/dev/null | grep -q "etcd Version: $version\$"
}

# Work out which Debian mirror this machine uses, without naming one here.
mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "cannot find this machine's Debian mirror in /etc/apt/sources.list{,.d/debian.sources}; install etcd by hand into $prefix/etcd-v<version>/"
  echo "$uri"
}

todo=()
for v in "${versions[@]}"; do
  suite_for "$v" >/dev/null || die "etcd $v is not available from Debian; choose one of: ${all_versions[*]}"
  if installed "$prefix/etcd-v$v" "$v"; then
    echo "etcd $v: already installed in $prefix/etcd-v$v"
  else
    todo+=("$v")
  fi
done
[ ${#todo[@]} -gt 0 ] || exit 0

mkdir -p "$prefix" 2>/dev/null || true
[ -w "$prefix" ] || die "cannot write to $prefix; run as root or pass --prefix DIR (a folder you own), then point etcd-manager at it with --etcd-bin-dir"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/etcd-manager-apt
mkdir -p "$cache/lists/partial" "$cache/archives/partial"
uri=$(mirror)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "missing $keyring: install the debian-archive-keyring package"
{
  for s in bullseye bookworm trixie sid; do
    echo "deb [signed-by=$keyring] $uri $s main"
  done
} >"$cache/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$cache/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache::Archives=$cache/archives"
  -o "Dir::Cache=$cache" -o "APT::Get::List-Cleanup=0")

# Refresh the private lists at most once a day.
stamp="$cache/lists/.updated"
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
  echo "refreshing package lists for bullseye, bookworm, trixie and sid"
  apt-get "${apt_opts[@]}" update -qq >"$cache/update.log" 2>&1 \
    || die "apt-get update failed (see $cache/update.log)"
  touch "$stamp"
fi

arch=$(dpkg --print-architecture)
for v in "${todo[@]}"; do
  suite=$(suite_for "$v")
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  for pkg in etcd-server etcd-client; do
    # Pick the package version of this upstream version offered by its suite.
    pv=$(apt-cache "${apt_opts[@]}" madison "$pkg" 2>/dev/null \
      | awk -F'|' -v v="$v" -v s="$suite" '{gsub(/ /, "", $2); if ($2 ~ "^"v"[+-]" && $3 ~ s) {print $2; exit}}')
    [ -n "$pv" ] || die "Debian's $suite suite no longer offers $pkg $v; choose another version"
    (cd "$work" && apt-get "${apt_opts[@]}" download -qq "$pkg=$pv" >/dev/null 2>&1) \
      || die "download of $pkg=$pv failed; check the network and retry"
    dpkg -x "$work/${pkg}_${pv//:/%3a}_${arch}.deb" "$work/root" 2>/dev/null \
      || dpkg -x "$(ls "$work"/"${pkg}"_*.deb | head -n1)" "$work/root"
  done
  dest="$prefix/etcd-v$v"
  mkdir -p "$dest.tmp"
  for b in etcd etcdctl etcdutl; do
    if [ -f "$work/root/usr/bin/$b" ]; then
      install -m 0755 "$work/root/usr/bin/$b" "$dest.tmp/$b"
    fi
  done
  installed "$dest.tmp" "$v" || die "the etcd binary of $v does not run here ($dest.tmp/etcd --version)"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  rm -rf "$work"
  trap - EXIT
  echo "etcd $v: installed in $dest ($(ls "$dest" | tr '\n' ' '))"
done
