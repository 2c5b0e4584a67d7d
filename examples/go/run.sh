#!/usr/bin/env bash
# Runs the Go example against a scratch store: standby, then active after `pra site activate`.
# Run from the repository root by `make test-go` (which installs Debian's golang-go if needed).
set -euo pipefail
pra=${PRA_BIN:-target/debug/pra}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
url="sqlite://$scratch/state.db"
export GOFLAGS=-mod=mod GOCACHE=${GOCACHE:-$scratch/gocache} GOPATH=${GOPATH:-$scratch/gopath}
cd examples/go
go build -o "$scratch/pra-go" .
cd - >/dev/null
set +e
out=$("$scratch/pra-go" "$url" rbx); code=$?
set -e
echo "$out"
[ "$code" = 1 ] && grep -q "may_run=false token=0 active=NONE" <<<"$out"
PRA_STORE=$url "$pra" site activate rbx --expect-token 0 --by go-test >/dev/null
out=$("$scratch/pra-go" "$url" rbx)
echo "$out"
grep -q "may_run=true token=1 active=rbx" <<<"$out"
set +e
"$scratch/pra-go" "redis://nope" rbx 2>"$scratch/err"; code=$?
set -e
[ "$code" = 2 ] && grep -q PRA_RESULT_INVALID_ARGUMENT "$scratch/err"
echo "go: 3 passed, 0 failed"
