#!/usr/bin/env bash
# Builds tests/c/test_pra.c with the system cc (-Wall -Wextra -Werror) against include/pra.h,
# links it to libpra.so and to libpra.a (built here with the test-only cargo feature test-panic,
# which adds pra_test_panic, and copied from cargo's libpra_ffi.* to the C names), runs both, and the static one under valgrind
# (no definite leak, no invalid access), against a scratch SQLite store and a real etcd server
# (Debian's etcd-server) started here on loopback ports. Run from the repository root by
# `make test-c`.
set -euo pipefail
target=${CARGO_TARGET_DIR:-target}/debug

# etcd on two free loopback ports, killed on exit.
command -v etcd >/dev/null || { echo "etcd is not installed: run make apt-tools" >&2; exit 1; }
etcd_dir=$(mktemp -d)
read -r client peer < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
etcd --name c-test --data-dir "$etcd_dir/data" \
  --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "c-test=http://127.0.0.1:$peer" >"$etcd_dir/log" 2>&1 &
etcd_pid=$!
trap 'kill $etcd_pid 2>/dev/null; wait $etcd_pid 2>/dev/null || true; rm -rf "$etcd_dir"' EXIT
endpoint=127.0.0.1:$client
for _ in $(seq 100); do
  PRA_STORE=etcd://$endpoint/ready "$target/pra" site show >/dev/null 2>&1 && break
  sleep 0.1
done
PRA_STORE=etcd://$endpoint/ready "$target/pra" site show >/dev/null || { cat "$etcd_dir/log"; exit 1; }

out=$target/c-tests
lib=$out/lib
mkdir -p "$lib"
${CARGO:-cargo} build -p pra-ffi --features test-panic
# The shared library under its soname (versioned: libpra.so.0.1 while pra is 0.1.x), which is
# what a program linked to it asks the loader for, and the development link -lpra finds.
soname=$(objdump -p "$target/libpra_ffi.so" | awk '$1 == "SONAME" {print $2}')
[[ $soname =~ ^libpra\.so\.[0-9]+(\.[0-9]+)?$ ]] || { echo "unversioned soname: $soname" >&2; exit 1; }
cp -f "$target/libpra_ffi.so" "$lib/$soname"
ln -sf "$soname" "$lib/libpra.so"
cp -f "$target/libpra_ffi.a" "$lib/libpra.a"
cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -Iinclude -Itests/c)
cc "${cflags[@]}" tests/c/test_pra.c -L"$lib" -lpra -Wl,-rpath,"$PWD/$lib" -lpthread -o "$out/test_pra_shared"
cc "${cflags[@]}" tests/c/test_pra.c "$lib/libpra.a" -lpthread -ldl -lm -o "$out/test_pra_static"
ldd "$out/test_pra_shared" | grep -q "$soname => $PWD/$lib/$soname"
! ldd "$out/test_pra_static" | grep -q libpra.so
for bin in test_pra_shared test_pra_static; do
  scratch=$(mktemp -d)
  echo "== $bin"
  "$out/$bin" "$scratch" "$endpoint"
  rm -rf "$scratch"
done
# A program that owns its database through the system's libsqlite3 beside libpra.so.
cc "${cflags[@]}" tests/c/test_app_sqlite.c -L"$lib" -lpra -Wl,-rpath,"$PWD/$lib" -lsqlite3 -lpthread -o "$out/test_app_sqlite"
scratch=$(mktemp -d)
echo "== test_app_sqlite"
"$out/test_app_sqlite" "$scratch"
rm -rf "$scratch"
if command -v valgrind >/dev/null; then
  scratch=$(mktemp -d)
  echo "== valgrind test_pra_static"
  valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite "$out/test_pra_static" "$scratch" "$endpoint"
  rm -rf "$scratch"
else
  echo "valgrind is not installed" >&2
  exit 1
fi
