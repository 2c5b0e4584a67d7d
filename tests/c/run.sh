#!/usr/bin/env bash
# Builds tests/c/test_pra.c with the system cc (-Wall -Wextra -Werror) against include/pra.h,
# links it to libpra.so and to libpra.a, runs both, and the static one under valgrind
# (no definite leak, no invalid access). Run from the repository root by `make test-c`.
set -euo pipefail
target=${CARGO_TARGET_DIR:-target}/debug
out=$target/c-tests
mkdir -p "$out"
cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -Iinclude)
cc "${cflags[@]}" tests/c/test_pra.c -L"$target" -lpra -Wl,-rpath,"$PWD/$target" -lpthread -o "$out/test_pra_shared"
cc "${cflags[@]}" tests/c/test_pra.c "$target/libpra.a" -lpthread -ldl -lm -o "$out/test_pra_static"
ldd "$out/test_pra_shared" | grep -q libpra.so
! ldd "$out/test_pra_static" | grep -q libpra.so
for bin in test_pra_shared test_pra_static; do
  scratch=$(mktemp -d)
  echo "== $bin"
  "$out/$bin" "$scratch"
  rm -rf "$scratch"
done
if command -v valgrind >/dev/null; then
  scratch=$(mktemp -d)
  echo "== valgrind test_pra_static"
  valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite "$out/test_pra_static" "$scratch"
  rm -rf "$scratch"
else
  echo "valgrind is not installed" >&2
  exit 1
fi
