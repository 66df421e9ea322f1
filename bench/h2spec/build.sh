#!/bin/sh
# Build h2spec (github.com/summerwind/h2spec) from a source checkout using only Debian packages.
# Usage: h2spec-build.sh <h2spec-source-dir> [output-binary]   (default output: /tmp/h2spec)
# Needs root for apt-get; downloads nothing except via apt-get. Verified with Debian bookworm
# (go 1.19.8, golang-golang-x-net-dev, cobra 1.6.1) against h2spec commit af83a65.
set -eu
SRC=$(cd "${1:?usage: $0 <h2spec-source-dir> [output]}" && pwd)
OUT=${2:-/tmp/h2spec}
case "$OUT" in /*) ;; *) OUT="$(pwd)/$OUT" ;; esac

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    golang-go golang-github-fatih-color-dev golang-github-spf13-cobra-dev golang-golang-x-net-dev

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/gopath/src/github.com/summerwind"
cp -r "$SRC" "$WORK/gopath/src/github.com/summerwind/h2spec"

# GOPATH mode: the Debian -dev packages install their sources under /usr/share/gocode/src.
export GOPATH="$WORK/gopath:/usr/share/gocode" GO111MODULE=off GOFLAGS= GOCACHE="$WORK/cache" GOPROXY=off
cd "$WORK/gopath/src/github.com/summerwind/h2spec"
go build -o "$OUT" ./cmd/h2spec
"$OUT" --version
echo "built $OUT"
