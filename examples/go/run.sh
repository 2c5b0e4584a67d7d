#!/usr/bin/env bash
# Runs the Go example, built through pkg-config against libpra installed in PREFIX (`make
# test-go` installs it there): standby, then active after `pra site activate`; an error; then
# many goroutines whose every error message must be their own call's. Also links a C program
# to the installed static library with pkg-config's Libs.private, which must be enough.
set -euo pipefail
prefix=${PREFIX:?PREFIX: where make install put libpra}
pra=${PRA_BIN:-target/debug/pra}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
url="sqlite://$scratch/state.db"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig LD_LIBRARY_PATH=$prefix/lib
[ "$(pkg-config --modversion pra)" = "$("$pra" --version | awk '{print $2}')" ]
export GOFLAGS=-mod=mod GOCACHE=${GOCACHE:-$scratch/gocache} GOPATH=${GOPATH:-$scratch/gopath}
(cd examples/go && go build -o "$scratch/pra-go" .)
# Dynamically linked, through the soname the install made, from the prefix.
soname=$(objdump -p "$prefix/lib/libpra.so" | awk '$1 == "SONAME" {print $2}')
ldd "$scratch/pra-go" | grep -q "$soname => $prefix/lib/$soname"
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
[ "$code" = 2 ] && grep -q 'PRA_RESULT_INVALID_ARGUMENT: .*"redis://nope"' "$scratch/err"
"$scratch/pra-go" --goroutines 64 500
# The static library with exactly what pra.pc says it needs.
libs_private=$(pkg-config --static --libs-only-l pra | tr ' ' '\n' | grep -vx -- -lpra | tr '\n' ' ')
printf '#include "pra.h"\n#include <string.h>\nint main(void) { return strcmp(pra_version(), PRA_VERSION_STRING) != 0; }\n' >"$scratch/v.c"
# shellcheck disable=SC2086 # a list of flags
cc $(pkg-config --cflags pra) "$scratch/v.c" "$prefix/lib/libpra.a" $libs_private -o "$scratch/v"
"$scratch/v"
echo "go: 5 passed, 0 failed"
