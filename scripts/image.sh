#!/usr/bin/env bash
# Build etcd-manager's two images with podman and no registry at all:
#
#   etcd-manager-slim:TAG   what kops runs (spec.etcdClusters[].manager.image):
#                           FROM scratch, the root folder deploy/image-rootfs.sh
#                           makes (the manager at /ko-app/etcd-manager, /go-runner,
#                           etcd-manager-ctl, etcd-backup, the AWS volume tools,
#                           CA roots); etcd comes from kops' own init containers
#                           or image volumes into /opt, as for upstream's image.
#   etcd-manager:TAG        the same, and every etcd version deploy/install-etcd.sh
#                           installs, under /opt/etcd-v<version>/: for users
#                           without kops (systemd, plain static pods).
#
#   scripts/image.sh [--profile release|debug] [--tag TAG] [--save DIR]
#
# --profile: which cargo build's binaries (default release; CI's image test
# uses the debug build it already has). --save DIR writes each image as an
# OCI archive (DIR/etcd-manager-slim-TAG.oci.tar, ...). Prints the two image
# names. Needs podman and runc (scripts/setup.sh installs them); crun does
# not work on these machines, so runc is named.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "image: error: $*" >&2; exit 1; }
profile=release
tag=""
save=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --save) save=$2; shift 2 ;;
    *) die "unknown argument $1 (--profile P, --tag T, --save DIR)" ;;
  esac
done
command -v podman >/dev/null || die "podman is not installed: scripts/setup.sh installs it (apt-get install podman runc)"
command -v runc >/dev/null || die "runc is not installed: apt-get install runc"

version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ -n "$tag" ] || tag="v$version-${revision:0:12}"
source_url=$(git config --get remote.origin.url 2>/dev/null || echo "etcd-manager (Rust)")

work=target/image
mkdir -p "$work"
# podman's default nofile/nproc ulimits are refused on these machines.
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$PWD/$work/containers.conf
podman_() { podman --runtime runc "$@"; }

case "$profile" in
  release) cargo build --release --locked --bins -q; bin=target/release ;;
  debug) cargo build --locked --bins -q; bin=target/debug ;;
  *) die "--profile takes release or debug" ;;
esac

labels=(
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.revision=$revision"
  --label "org.opencontainers.image.source=$source_url"
  --label "org.opencontainers.image.licenses=Apache-2.0"
)

# --- slim ---------------------------------------------------------------
deploy/image-rootfs.sh "$bin" "$work/slim/rootfs"
cat >"$work/slim/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/sbin:/usr/bin:/ko-app SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
STOPSIGNAL SIGTERM
ENTRYPOINT ["/ko-app/etcd-manager"]
EOF
podman_ build -q "${labels[@]}" --label "org.opencontainers.image.title=etcd-manager-slim" \
  -t "etcd-manager-slim:$tag" -f "$work/slim/Containerfile" "$work/slim" >/dev/null

# --- full: slim and the etcd versions -----------------------------------
prefix=/opt
[ -n "${ETCD_MANAGER_ETCD_BIN_DIR:-}" ] && prefix=$ETCD_MANAGER_ETCD_BIN_DIR
rm -rf "$work/full"
mkdir -p "$work/full/opt"
found=0
for d in "$prefix"/etcd-v*; do
  [ -x "$d/etcd" ] || continue
  cp -a "$d" "$work/full/opt/"
  found=1
done
[ $found = 1 ] || die "no etcd under $prefix/etcd-v*: run deploy/install-etcd.sh (scripts/setup.sh does)"
# What those etcd binaries load beyond the slim image's libraries.
mkdir -p "$work/full/extra"
for f in "$work"/full/opt/etcd-v*/*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  # Static binaries (etcd built from Go modules) are "not a dynamic executable".
  { ldd "$f" 2>/dev/null || true; } | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'
done | sort -u | while read -r l; do
  [ -e "$work/slim/rootfs$l" ] && continue
  mkdir -p "$work/full/extra$(dirname "$l")"
  cp -L "$l" "$work/full/extra$l"
done
cat >"$work/full/Containerfile" <<EOF
FROM localhost/etcd-manager-slim:$tag
COPY opt/ /opt/
COPY extra/ /
EOF
podman_ build -q "${labels[@]}" --label "org.opencontainers.image.title=etcd-manager" \
  -t "etcd-manager:$tag" -f "$work/full/Containerfile" "$work/full" >/dev/null

if [ -n "$save" ]; then
  mkdir -p "$save"
  for i in etcd-manager-slim etcd-manager; do
    rm -f "$save/$i-$tag.oci.tar"
    podman_ save -q --format oci-archive -o "$save/$i-$tag.oci.tar" "localhost/$i:$tag"
  done
fi
echo "localhost/etcd-manager-slim:$tag"
echo "localhost/etcd-manager:$tag"
