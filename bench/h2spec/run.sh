#!/bin/sh
# HTTP/2 conformance of the TLS listener with h2spec (built by build.sh beside this file).
# Usage (as root, from the repository): bench/h2spec/run.sh [h2spec-binary] [wasmgress-binary]
# Runs `wasmgress demo` on a copy of examples/quickstart in a network namespace of its own (so
# its fixed ports collide with nothing), then h2spec against https://127.0.0.1:8443 with TLS.
set -eu
H2SPEC=${1:-/tmp/h2spec}
BIN=${2:-target/debug/wasmgress}
case "$BIN" in /*) ;; *) BIN="$(pwd)/$BIN" ;; esac
WORK=$(mktemp -d)
cp -r examples/quickstart "$WORK/quickstart"
rm -rf "$WORK/quickstart/generated"
exec unshare --net sh -c '
  ip link set lo up
  "$1" demo --dir "$2/quickstart" >"$2/wasmgress.log" 2>&1 &
  pid=$!
  i=0; until curl -sk -o /dev/null https://127.0.0.1:8443/ || [ $i -ge 60 ]; do i=$((i+1)); sleep 0.5; done
  "$3" -h 127.0.0.1 -p 8443 -t -k -o 5; status=$?
  kill $pid; exit $status
' run "$BIN" "$WORK" "$H2SPEC"
