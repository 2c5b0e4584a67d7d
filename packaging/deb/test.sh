#!/usr/bin/env bash
# Builds the .deb from BINARY, installs it with dpkg on this machine, uses it, and purges it:
#   packaging/deb/test.sh BINARY          (make test-deb; needs root: CI runs as root)
# Checks: the package's metadata, `pra --version` from /usr/bin, the `pra` group and
# /var/lib/pra (2770, group pra), the packaged pra.toml accepted as is, `pra check` against a
# scratch store (standby, then active), the man page and completions in place, and that purge
# leaves nothing of the package behind.
set -euo pipefail
bin=${1:?usage: test.sh BINARY}
if [ "$(id -u)" != 0 ]; then
  [ "${CI:-}" = true ] && { echo "test-deb: needs root (dpkg -i)" >&2; exit 1; }
  echo "test-deb: SKIPPED (not root; CI runs it as root)"; exit 0
fi
if dpkg-query -W -f='${Status}' pra 2>/dev/null | grep -q 'install ok installed'; then
  echo "test-deb: a pra package is already installed here; refusing to replace it" >&2; exit 1
fi
scratch=$(mktemp -d)
trap 'dpkg --purge pra >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
deb=$(packaging/deb/build.sh "$bin" "$scratch/out")
fail() { echo "test-deb: $*" >&2; exit 1; }
dpkg-deb --field "$deb" Package | grep -qx pra || fail "package name"
dpkg-deb --field "$deb" Depends | grep -q 'libc6 (>= 2\.[0-9]*)' || fail "no libc6 dependency"
dpkg-deb --contents "$deb" | grep ' ./usr/bin/pra$' >/dev/null || fail "no /usr/bin/pra"
dpkg -i "$deb" >/dev/null
[ "$(/usr/bin/pra --version)" = "$("$bin" --version)" ] || fail "/usr/bin/pra --version"
getent group pra >/dev/null || fail "no pra group"
[ "$(stat -c '%a %G' /var/lib/pra)" = "2770 pra" ] || fail "/var/lib/pra is $(stat -c '%a %G' /var/lib/pra)"
for f in /etc/pra/pra.toml /lib/systemd/system/pra-job@.service /lib/systemd/system/pra-follow@.service; do
  [ -s "$f" ] || fail "missing $f"
done
# The man page and completions, when this pra has them.
if "$bin" man >/dev/null 2>&1; then
  [ -s /usr/share/man/man1/pra.1.gz ] || fail "missing the man page"
  man -l /usr/share/man/man1/pra.1.gz >/dev/null 2>&1 || zcat /usr/share/man/man1/pra.1.gz | grep -q '^\.TH' \
    || fail "the man page does not render"
fi
if "$bin" completions bash >/dev/null 2>&1; then
  bash -n /usr/share/bash-completion/completions/pra || fail "bash completion does not parse"
fi
grep -q 'ExecCondition=/usr/bin/pra check' /lib/systemd/system/pra-job@.service || fail "unit path"
! readelf -S /usr/bin/pra | grep '\.debug_info' >/dev/null || fail "/usr/bin/pra is not stripped"
# The store's directory as README's "File permissions" says: the package's group, setgid.
mkdir "$scratch/store" && chgrp pra "$scratch/store" && chmod 2770 "$scratch/store"
store="sqlite://$scratch/store/state.db"
# The packaged configuration as is (its store_group is the package's group).
PRA_CONFIG=/etc/pra/pra.toml pra site show --store "$store" --site rbx >/dev/null || fail "pra.toml refused"
set +e; PRA_CONFIG=/etc/pra/pra.toml pra check --store "$store" --site rbx; code=$?; set -e
[ "$code" = 1 ] || fail "pra check on a new store: exit $code, not 1 (standby)"
PRA_CONFIG=/etc/pra/pra.toml pra site activate rbx --expect-token 0 --by test-deb --store "$store" >/dev/null
PRA_CONFIG=/etc/pra/pra.toml pra check --store "$store" --site rbx || fail "pra check on the active site"
[ "$(stat -c %G "$scratch/store/state.db")" = pra ] || fail "the store is not the pra group's"
dpkg --purge pra >/dev/null
for f in /usr/bin/pra /etc/pra/pra.toml /lib/systemd/system/pra-job@.service /var/lib/pra; do
  [ ! -e "$f" ] || fail "$f left after purge"
done
echo "test-deb: $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) installed, used and purged"
