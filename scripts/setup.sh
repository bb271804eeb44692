#!/usr/bin/env bash
# Install what building and testing etcd-manager needs, when missing:
# protoc (etcd-client's build), python3-venv, the etcd versions the tests use
# (Debian's, and 3.5.35, 3.6.16 and 3.7.3 built from etcd's Go modules with
# the machine's Go: about 3 minutes the first time, cached after), moto
# (an S3 server for tests) in .venv/ and Azurite (an Azure blob storage
# emulator) in .azurite/. Idempotent; safe to re-run.
#
#   scripts/setup.sh            everything the tests need
#   scripts/setup.sh --demo     only what the demo needs (protoc, etcd 3.6.16)
set -euo pipefail
cd "$(dirname "$0")/.."

demo=0
[ "${1:-}" = "--demo" ] && demo=1

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

if ! command -v cargo >/dev/null 2>&1; then
  die "cargo is not installed: install Rust 1.95 or newer (rustup), then re-run"
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 && sudo="sudo" || sudo=""
fi

apt_missing=()
command -v protoc >/dev/null 2>&1 || apt_missing+=(protobuf-compiler)
if [ $demo = 0 ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_missing+=(python3-venv)
fi
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
if [ $demo = 0 ]; then
  # openssl makes an RSA PKCS#1 CA key the way kops does, for the PKI tests.
  command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
  # iptables cuts links and drops packets in the partition suite's namespaces.
  command -v iptables >/dev/null 2>&1 || apt_missing+=(iptables)
  # promtool checks the alert rules; systemd-analyze checks the units.
  command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
  # npm installs Azurite, the Azure blob storage emulator.
  command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
  # The images (scripts/image.sh): podman with runc (crun fails here), and
  # what the slim image carries from this machine.
  command -v podman >/dev/null 2>&1 || apt_missing+=(podman)
  command -v runc >/dev/null 2>&1 || apt_missing+=(runc)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || apt_missing+=(ca-certificates)
  command -v mke2fs >/dev/null 2>&1 || apt_missing+=(e2fsprogs)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  say "installing ${apt_missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# etcd binaries: /opt when writable, else a folder of ours.
prefix=/opt
if ! { mkdir -p "$prefix" 2>/dev/null && [ -w "$prefix" ]; }; then
  prefix="$HOME/.local/etcd"
fi
versions=(3.3.25 3.4.23 3.5.16 3.5.30 3.5.35 3.6.16 3.7.3)
[ $demo = 1 ] && versions=(3.6.16)
if [ -n "$sudo" ] && [ "$prefix" = /opt ] && [ ! -w /opt ]; then
  $sudo deploy/install-etcd.sh --prefix "$prefix" "${versions[@]}" >&2
else
  deploy/install-etcd.sh --prefix "$prefix" "${versions[@]}" >&2
fi
if [ "$prefix" != /opt ]; then
  echo "export ETCD_MANAGER_ETCD_BIN_DIR=$prefix"
fi

if [ $demo = 0 ]; then
  if [ ! -x .venv/bin/moto_server ]; then
    say "installing moto (S3 server for tests) into .venv/"
    python3 -m venv .venv
    .venv/bin/pip install -q 'moto[server]' >&2
  fi
  if [ ! -x .azurite/node_modules/.bin/azurite-blob ]; then
    say "installing Azurite 3.37.0 (Azure blob storage emulator for tests) into .azurite/"
    npm install --prefix .azurite --no-audit --no-fund --silent azurite@3.37.0 >&2
  fi
  echo "export PATH=$PWD/.venv/bin:$PWD/.azurite/node_modules/.bin:\$PATH"
fi
