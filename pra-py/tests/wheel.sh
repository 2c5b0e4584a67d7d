#!/usr/bin/env bash
# The built wheel as users get it (make test-wheel): one abi3 wheel for CPython >= 3.9, tagged
# manylinux_2_28 (glibc 2.28: RHEL 8, Debian 10, Ubuntu 20.04), its extension stripped and
# needing no newer glibc, installed with pip into a fresh venv of every other CPython this
# machine has (pyenv's 3.9 to 3.13, Debian's python3) and used there.
set -euo pipefail
wheel=$(ls "${1:?usage: wheel.sh WHEEL_DIR}"/pra_failover-*.whl)
[ "$(wc -w <<<"$wheel")" = 1 ] || { echo "not one wheel: $wheel" >&2; exit 1; }
name=$(basename "$wheel")
fail() { echo "test-wheel: $*" >&2; exit 1; }
[[ $name == pra_failover-*-cp39-abi3-manylinux_2_28_* ]] || fail "tag: $name"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m zipfile -e "$wheel" "$scratch/unpacked"
so=$(ls "$scratch"/unpacked/pra/_pra*.so)
! readelf -S "$so" | grep '\.debug_info' >/dev/null || fail "the extension is not stripped"
glibc=$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
[ "$(printf '%s\n2.28\n' "$glibc" | sort -V | tail -1)" = 2.28 ] || fail "needs glibc $glibc > 2.28"
echo "test-wheel: $name ($(du -k "$wheel" | cut -f1) KiB, extension $(du -k "$so" | cut -f1) KiB, glibc >= $glibc)"
tried=0
for py in "$HOME"/.pyenv/versions/3.{9,10,12,13}*/bin/python3 /usr/bin/python3; do
  [ -x "$py" ] || continue
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv="$scratch/venv-$tried"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --no-index --no-deps "$wheel"
  "$venv/bin/python" - "$scratch/store-$tried.db" <<'PY'
import sys
import pra
store = pra.Store("sqlite://" + sys.argv[1])
assert store.active() is None or store.active().site is None, store.active()
record = store.activate("rbx", expect_token=0, by="test-wheel", reason="wheel")
assert record.token == 1 and record.site == "rbx" and record.changed_at.tzinfo is not None, record
with pra.Guard(store, "rbx", job="wheel") as verdict:
    assert verdict.may_run and verdict.token == 1
print("pra", pra.__version__, "on", sys.version.split()[0], "ok")
PY
  tried=$((tried + 1))
done
[ "$tried" -ge 1 ] || fail "no other CPython to install the wheel into"
echo "test-wheel: installed and used on $tried interpreter(s)"
