#!/usr/bin/env bash
# The slim image's whole root folder, from binaries built on a Debian
# bookworm machine (glibc): what kops' static pod runs, and nothing else.
#
#   deploy/image-rootfs.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds etcd-manager, etcd-manager-ctl and go-runner. OUT_DIR is
# emptied, then filled with:
#   /ko-app/etcd-manager        where kops' manifest starts it (through /go-runner)
#   /ko-app/etcd-manager-ctl
#   /ko-app/etcd-backup         the manager under upstream's backup-only name
#   /go-runner                  go-runner's flags: --log-file, --also-stdout, --redirect-stderr
#   /usr/sbin/{blkid,mke2fs,mkfs.ext4,e2fsck,fsck.ext4,fsck,resize2fs},
#   /usr/bin/{mount,umount}     the host tools the AWS volume provider runs
#   /etc/mke2fs.conf            mke2fs's defaults
#   the shared libraries all of these load (and the dynamic loader)
#   /etc/ssl/certs/ca-certificates.crt   CA roots for S3, GCS and Azure over TLS
#   /etc/passwd, /etc/group (root), /etc/nsswitch.conf, /tmp (1777)
# No shell, no package manager. scripts/image.sh builds the image from this
# folder (FROM scratch); deploy/Dockerfile runs this same script, so both
# give the same files (tests/e2e/image.rs compares them).
set -euo pipefail

die() { echo "image-rootfs: error: $*" >&2; exit 1; }
[ $# = 2 ] || die "usage: deploy/image-rootfs.sh BIN_DIR OUT_DIR"
bin=$1
out=$2
for b in etcd-manager etcd-manager-ctl go-runner; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: build the binaries first (cargo build --release --bins)"
done
command -v ldd >/dev/null || die "ldd is needed (libc-bin)"
[ -f /etc/ssl/certs/ca-certificates.crt ] || die "/etc/ssl/certs/ca-certificates.crt is missing: apt-get install ca-certificates"

rm -rf "$out"
mkdir -p "$out"/{ko-app,usr/sbin,usr/bin,etc/ssl/certs,tmp}
chmod 1777 "$out/tmp"

install -m 0555 "$bin/etcd-manager" "$out/ko-app/etcd-manager"
install -m 0555 "$bin/etcd-manager-ctl" "$out/ko-app/etcd-manager-ctl"
install -m 0555 "$bin/go-runner" "$out/go-runner"
# The same program: it runs as upstream's etcd-backup under that name.
ln "$out/ko-app/etcd-manager" "$out/ko-app/etcd-backup"

# The AWS volume provider's tools (blkid, mkfs.ext4 -F -m0 when blank, fsck
# -a, mount, resize2fs), as Debian ships them.
tools=(/usr/sbin/blkid /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/fsck /usr/sbin/resize2fs
       /usr/bin/mount /usr/bin/umount)
for t in "${tools[@]}"; do
  [ -x "$t" ] || die "$t is missing: apt-get install util-linux e2fsprogs mount"
  install -m 0555 "$t" "$out$t"
done
ln -s mke2fs "$out/usr/sbin/mkfs.ext4"
ln -s e2fsck "$out/usr/sbin/fsck.ext4"
[ -f /etc/mke2fs.conf ] && install -m 0644 /etc/mke2fs.conf "$out/etc/mke2fs.conf"

# Every shared library they load, at the path the loader finds it.
libs=$(for f in "$out"/ko-app/etcd-manager "$out"/ko-app/etcd-manager-ctl "$out"/go-runner \
                "${tools[@]/#/$out}"; do
         ldd "$f" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'
       done | sort -u)
for l in $libs; do
  mkdir -p "$out$(dirname "$l")"
  cp -L "$l" "$out$l"
  chmod 0555 "$out$l"
done

install -m 0444 /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\n' >"$out/etc/group"
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
chmod 0444 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"
