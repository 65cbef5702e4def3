#!/bin/sh
# Builds the tarball for machines without dpkg:
#   deploy/tarball.sh [BINARY] [OUTDIR]
# BINARY defaults to target/release/qianzhi (cargo build --release -p agent),
# OUTDIR to target/package. Prints the tarball's path.
set -eu
cd "$(dirname "$0")/.."

bin=${1:-target/release/qianzhi}
out=${2:-target/package}
[ -x "$bin" ] || { echo "tarball.sh: $bin is not an executable (cargo build --release -p agent)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(uname -m)
name="qianzhi-$version-$arch"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name"
install -m 0755 "$bin" "$stage/$name/qianzhi"
install -m 0755 deploy/install.sh "$stage/$name/install.sh"
install -m 0644 deploy/qianzhi.service deploy/README.md deploy/grafana-dashboard.json "$stage/$name/"
install -m 0644 deploy/agent.example.toml "$stage/$name/agent.toml"
install -m 0644 deploy/catalog.example.toml "$stage/$name/catalog.toml"

mkdir -p "$out"
tar -C "$stage" --owner=0 --group=0 -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
