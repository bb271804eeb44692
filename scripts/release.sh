#!/usr/bin/env bash
# A release's artifacts in one command, each stamped with the version and the
# revision (the commit it is built from):
#
#   scripts/release.sh [OUT_DIR]       (default target/release-artifacts)
#
#   etcd-manager-<version>-linux-amd64.tar.gz   etcd-manager, etcd-manager-ctl,
#                                               go-runner (release build), README,
#                                               LICENSE notes, a VERSION file
#   etcd-manager-slim-<tag>.oci.tar             the images as OCI archives
#   etcd-manager-<tag>.oci.tar                  (scripts/image.sh)
#   etcd-manager-<version>.cdx.json             an SBOM of the Rust dependencies
#                                               (CycloneDX, made by cargo-cyclonedx)
#   SHA256SUMS                                  of all of the above
#
# `etcd-manager --version` prints the same version and revision. Push the
# images to a registry of your own with `skopeo copy oci-archive:<file>
# docker://<registry>/<name>:<tag>` (docs/operations.md, "Images").
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/release-artifacts}
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
revision=$(git rev-parse HEAD)
tag="v$version-${revision:0:12}"
mkdir -p "$out"
out=$(cd "$out" && pwd)

echo "release: building $version at $revision" >&2
cargo build --release --locked --bins
for b in etcd-manager etcd-manager-ctl; do
  stamped=$("target/release/$b" --version)
  case "$stamped" in
    *"$version (revision $revision)"*) ;;
    *) echo "release: $b --version says '$stamped', not $version at $revision" >&2; exit 1 ;;
  esac
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
name="etcd-manager-$version-linux-amd64"
mkdir -p "$stage/$name"
install -m 0755 target/release/etcd-manager target/release/etcd-manager-ctl target/release/go-runner "$stage/$name/"
cp README.md "$stage/$name/"
printf 'etcd-manager %s\nrevision %s\n' "$version" "$revision" >"$stage/$name/VERSION"
tar -C "$stage" --owner=0 --group=0 --sort=name -czf "$out/$name.tar.gz" "$name"

scripts/image.sh --profile release --tag "$tag" --save "$out" >/dev/null

if ! cargo cyclonedx --version >/dev/null 2>&1; then
  echo "release: installing cargo-cyclonedx (the SBOM tool)" >&2
  cargo install --locked cargo-cyclonedx >&2
fi
cargo cyclonedx --format json --spec-version 1.5 --override-filename "etcd-manager-$version.cdx" \
  --target x86_64-unknown-linux-gnu -q >&2
mv "etcd-manager-$version.cdx.json" "$out/"
find . -name "etcd-manager-$version.cdx.json" -not -path "./target/*" -delete 2>/dev/null || true

(cd "$out" && sha256sum "$name.tar.gz" "etcd-manager-slim-$tag.oci.tar" "etcd-manager-$tag.oci.tar" \
  "etcd-manager-$version.cdx.json" >SHA256SUMS)
ls -l "$out" >&2
echo "$out"
