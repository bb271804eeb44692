#!/usr/bin/env bash
# Install etcd binaries into <prefix>/etcd-v<version>/ (etcd, etcdctl, etcdutl).
#
#   deploy/install-etcd.sh [--prefix DIR] VERSION...
#   deploy/install-etcd.sh --all            # every version we know how to get
#
# Versions Debian carries (suite, package version):
#   3.3.25 bullseye, 3.4.23 bookworm, 3.5.16 trixie, 3.5.30 sid
# Versions built from source (listed below): the one etcd version pinned in
# each deploy/etcd-build/v<minor>/go.mod beside this script.
#
# The packages are fetched with a private apt configuration (its own sources
# list and lists folder under the cache dir), pointing at the same Debian
# mirror this machine already uses, so the machine's own apt setup is never
# touched. Source builds compile etcd's published Go modules with the Go on
# PATH (CGO_ENABLED=0, one multi-call binary installed as etcd, etcdctl and
# etcdutl); Go's own module and build caches (go env GOMODCACHE GOCACHE) make
# a second build fast. Idempotent: a version whose `etcd --version` already
# answers is skipped. Works without root as long as the prefix is writable.
set -euo pipefail

prog=$(basename "$0")
prefix=/opt
versions=()
debian_versions=(3.3.25 3.4.23 3.5.16 3.5.30)
build_root=$(cd "$(dirname "$0")" && pwd)/etcd-build

# The etcd version a deploy/etcd-build/v<minor>/ folder pins (server module).
pinned_version() {
  awk '$1 == "go.etcd.io/etcd/server/v3" {sub(/^v/, "", $2); print $2; exit}' "$1/go.mod" 2>/dev/null
}

source_versions=()
for d in "$build_root"/v*/; do
  [ -f "$d/go.mod" ] || continue
  pv=$(pinned_version "$d")
  [ -n "$pv" ] && source_versions+=("$pv")
done
all_versions=("${debian_versions[@]}" "${source_versions[@]}")

usage() {
  awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"
  if [ ${#source_versions[@]} -gt 0 ]; then
    echo "Built from source here: ${source_versions[*]} (from $build_root)"
  else
    echo "Built from source here: none ($build_root is missing)"
  fi
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
  # grep reads all the output (no -q): an early exit would SIGPIPE etcd and,
  # with pipefail, fail the check.
  [ -x "$dir/etcd" ] && "$dir/etcd" --version 2>/dev/null | grep "etcd Version: $version\$" >/dev/null
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

# The build folder of a version built from source: deploy/etcd-build/v<minor>/
# when its go.mod pins exactly that version.
source_dir_for() {
  local d=$build_root/v${1%.*}
  [ -f "$d/go.mod" ] && [ "$(pinned_version "$d")" = "$1" ] && echo "$d"
}

todo=()
build_todo=()
for v in "${versions[@]}"; do
  if ! suite_for "$v" >/dev/null && [ -z "$(source_dir_for "$v")" ]; then
    if [ -f "$build_root/v${v%.*}/go.mod" ]; then
      die "etcd $v is not available from Debian, and $build_root/v${v%.*}/go.mod pins $(pinned_version "$build_root/v${v%.*}") instead; choose one of: ${all_versions[*]}"
    fi
    die "etcd $v is not available from Debian; choose one of: ${all_versions[*]}"
  fi
  if installed "$prefix/etcd-v$v" "$v"; then
    echo "etcd $v: already installed in $prefix/etcd-v$v"
  elif suite_for "$v" >/dev/null; then
    todo+=("$v")
  else
    build_todo+=("$v")
  fi
done
[ ${#todo[@]} -gt 0 ] || [ ${#build_todo[@]} -gt 0 ] || exit 0

mkdir -p "$prefix" 2>/dev/null || true
[ -w "$prefix" ] || die "cannot write to $prefix; run as root or pass --prefix DIR (a folder you own), then point etcd-manager at it with --etcd-bin-dir"

# Build etcd $1 from the Go modules pinned in its deploy/etcd-build folder.
build_from_source() {
  local v=$1 src gomin have work dest log start
  src=$(source_dir_for "$v")
  gomin=$(awk '$1 == "go" {print $2; exit}' "$src/go.mod")
  command -v go >/dev/null 2>&1 \
    || die "etcd $v is built from source and needs Go >= $gomin on PATH; install Go $gomin or newer and re-run"
  have=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null) || have=unknown
  have=${have#go}
  [ "$(printf '%s\n%s\n' "$gomin" "$have" | sort -V | head -n1)" = "$gomin" ] \
    || die "etcd $v is built from source and needs Go >= $gomin on PATH; $(command -v go) is go$have"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log=$work/build.log
  echo "etcd $v: building from Go modules in $src with go$have (the first build downloads the modules and takes minutes; Go's caches $(GOTOOLCHAIN=local go env GOMODCACHE) and $(GOTOOLCHAIN=local go env GOCACHE) make later ones quick)"
  start=$SECONDS
  # GOTOOLCHAIN=local: never fetch another Go; -mod=readonly: go.mod and
  # go.sum are used as committed; -buildvcs=false: the stamp would describe
  # this repository, not etcd's. GOFLAGS from the caller (say -p=1) apply.
  if ! (cd "$src" && CGO_ENABLED=0 GOTOOLCHAIN=local \
    go build -mod=readonly -trimpath -buildvcs=false \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=go-module-build" \
      -o "$work/etcd" . ) >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "building etcd $v failed (output above); check the network (Go module downloads) and that Go is >= $gomin"
  fi
  dest="$prefix/etcd-v$v"
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  install -m 0755 "$work/etcd" "$dest.tmp/etcd"
  for b in etcdctl etcdutl; do
    ln "$dest.tmp/etcd" "$dest.tmp/$b" 2>/dev/null || cp -p "$dest.tmp/etcd" "$dest.tmp/$b"
  done
  installed "$dest.tmp" "$v" || die "the etcd binary built for $v does not report version $v ($dest.tmp/etcd --version)"
  "$dest.tmp/etcdctl" version 2>/dev/null | grep "etcdctl version: $v\$" >/dev/null \
    || die "the etcdctl built for $v does not report version $v ($dest.tmp/etcdctl version)"
  "$dest.tmp/etcdutl" version 2>/dev/null | grep "etcdutl version: $v\$" >/dev/null \
    || die "the etcdutl built for $v does not report version $v ($dest.tmp/etcdutl version)"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  rm -rf "$work"
  trap - EXIT
  echo "etcd $v: built in $((SECONDS - start))s and installed in $dest (etcd, etcdctl and etcdutl are one binary, hard-linked)"
}

for v in ${build_todo[@]+"${build_todo[@]}"}; do
  build_from_source "$v"
done
[ ${#todo[@]} -gt 0 ] || exit 0

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
