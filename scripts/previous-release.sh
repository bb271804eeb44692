#!/usr/bin/env bash
# Builds the previous release's etcd-manager from this repository's own
# history, for the rolling-update tests (tests/e2e/rolling.rs), and prints
# the binary's path. Cached under target/previous-release/.
#
#   scripts/previous-release.sh          build if missing, print the path
#
# The previous release is the commit below: the last one that landed, which
# a cluster must be able to roll from. It is built in the workspace's own
# target dir (the dependencies from crates.io are built once), with its
# workspace packages renamed `previous-*` (their crate names kept): cargo
# tells units apart by package name and version, not by path, so the old
# `gossip` would otherwise take the place of the current one's artifacts.
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
python3 - "$src" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
members = ["gossip", "lock", "backup", "etcd", "tests"]
def rename(toml, old, lib):
    text = toml.read_text()
    text = re.sub(r'(?m)^name = "%s"$' % re.escape(old), 'name = "previous-%s"' % old, text, count=1)
    if "[lib]" in text:
        text = text.replace("[lib]", '[lib]\nname = "%s"' % lib, 1)
    else:
        text += '\n[lib]\nname = "%s"\n' % lib
    toml.write_text(text)
for m in members:
    rename(root / m / "Cargo.toml", m, m)
rename(root / "Cargo.toml", "etcd-manager", "etcd_manager")
top = root / "Cargo.toml"
text = top.read_text()
for m in members + ["etcd-manager"]:
    text = re.sub(r'(?m)^%s = \{ path = "([^"]+)" \}' % re.escape(m),
                  r'%s = { path = "\1", package = "previous-%s" }' % (m, m), text)
text = text.replace('tests = { path = "tests" }', 'tests = { path = "tests", package = "previous-tests" }')
text = re.sub(r'(?m)^name = "etcd-manager"$', 'name = "previous-etcd-manager"', text)
top.write_text(text)
PY
echo "previous-release: building etcd-manager at ${commit:0:12}" >&2
CARGO_TARGET_DIR="$PWD/target" cargo build --bin previous-etcd-manager \
  --manifest-path "$src/Cargo.toml" >&2
cp target/debug/previous-etcd-manager "$bin.tmp"
mv "$bin.tmp" "$bin"
rm -rf "$src" target/debug/previous-etcd-manager
echo "$PWD/$bin"
