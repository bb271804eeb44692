#!/usr/bin/env bash
# Builds the previous release's etcd-manager from this repository's own
# history, for the rolling-update tests (tests/e2e/rolling.rs), and prints
# the binary's path. Cached under target/previous-release/.
#
#   scripts/previous-release.sh          build if missing, print the path
#
# The previous release is the commit below: the last one that landed before
# the wire or on-disk formats changed, which a cluster must be able to roll
# from. The build shares target/ with the workspace (the dependencies are
# built once), and takes about a minute after the workspace's own build.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=64ac7c922ba9e367efde6b0ab24df0ce713e688a

die() { echo "previous-release: error: $*" >&2; exit 1; }

out=target/previous-release
bin="$out/etcd-manager-${commit:0:12}"
if [ -x "$bin" ]; then
  echo "$PWD/$bin"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "previous-release: fetching $commit (a shallow clone lacks it)" >&2
  git fetch --quiet --depth=1 origin "$commit" >&2 \
    || die "commit $commit is not in this clone and could not be fetched; clone with history (git fetch --unshallow)"
fi
src="$out/src-${commit:0:12}"
rm -rf "$src"
mkdir -p "$src"
git archive "$commit" | tar -x -C "$src"
echo "previous-release: building etcd-manager at ${commit:0:12}" >&2
# The same target dir and profile as the workspace: only the workspace's own
# crates are compiled again. The build leaves its binary at
# target/debug/etcd-manager (the next cargo build of the workspace puts the
# current one back); keep a copy under its own name.
CARGO_TARGET_DIR="$PWD/target" cargo build --locked --bin etcd-manager \
  --manifest-path "$src/Cargo.toml" >&2
cp target/debug/etcd-manager "$bin.tmp"
mv "$bin.tmp" "$bin"
rm -rf "$src"
echo "$PWD/$bin"
