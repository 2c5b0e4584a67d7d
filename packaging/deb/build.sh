#!/usr/bin/env bash
# Builds the Debian package of the `pra` command with dpkg-deb (no tool beyond Debian's own):
#   packaging/deb/build.sh BINARY OUTDIR      (make deb: the release binary into target/deb)
# It holds /usr/bin/pra (stripped), the systemd units, a commented /etc/pra/pra.toml (a conffile),
# the man page and shell completions, and the `pra` system group with /var/lib/pra for a shared
# store (postinst). The Depends line is computed from the glibc symbol versions the binary uses.
set -euo pipefail
bin=${1:?usage: build.sh BINARY OUTDIR}
out=${2:?usage: build.sh BINARY OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc/pra" "$stage/lib/systemd/system" \
  "$stage/usr/share/doc/pra/examples" "$stage/usr/share/man/man1" \
  "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"
strip --strip-unneeded -o "$stage/usr/bin/pra" "$bin"
chmod 0755 "$stage/usr/bin/pra"

# The units as shipped in examples/, with the packaged binary's path.
for unit in pra-job@.service pra-job@.timer pra-follow@.service; do
  sed 's|/usr/local/bin/pra |/usr/bin/pra |g' "$root/examples/deploy/systemd/$unit" \
    >"$stage/lib/systemd/system/$unit"
  chmod 0644 "$stage/lib/systemd/system/$unit"
done
# The configuration, with the group the package creates sharing the store.
sed 's|^# store_group = "pra"|store_group = "pra"|' "$root/examples/deploy/pra.toml" \
  >"$stage/etc/pra/pra.toml"
chmod 0644 "$stage/etc/pra/pra.toml"
cp -r "$root/examples/deploy/cron" "$root/examples/deploy/zerto" \
  "$root/examples/deploy/systemd/cron.service.d" "$stage/usr/share/doc/pra/examples/"
gzip -9n <"$root/README.md" >"$stage/usr/share/doc/pra/README.md.gz"
printf 'pra %s\nLicense: Apache-2.0 (/usr/share/common-licenses/Apache-2.0)\n' "$version" \
  >"$stage/usr/share/doc/pra/copyright"

# The man page and completions, from the binary itself (when it has them: `pra man`,
# `pra completions SHELL`).
if "$bin" man >/dev/null 2>&1; then
  "$bin" man | gzip -9n >"$stage/usr/share/man/man1/pra.1.gz"
fi
if "$bin" completions bash >/dev/null 2>&1; then
  "$bin" completions bash >"$stage/usr/share/bash-completion/completions/pra"
  "$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_pra"
  "$bin" completions fish >"$stage/usr/share/fish/vendor_completions.d/pra.fish"
fi
find "$stage/usr/share" -type d -empty -delete
find "$stage/usr/share" -type f -exec chmod 0644 {} +

# The newest glibc symbol version the binary needs is the oldest libc6 it runs on.
glibc=$(objdump -T "$stage/usr/bin/pra" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
size=$(du -ks "$stage" --exclude=DEBIAN | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: pra
Version: $version
Architecture: $arch
Maintainer: pra developers <pra@example.invalid>
Depends: libc6 (>= $glibc), libgcc-s1, adduser
Section: admin
Priority: optional
Installed-Size: $size
Homepage: https://example.invalid/pra
Description: disaster recovery between two sites, safely and measurably
 One active-site record with a fencing token that every cron job consults
 (pra run, pra check: deny by default), failover and failback plans that never
 let two sites be active, SQLite backup, retention and restore that never lose
 a committed write, and the status document of the application.
CONTROL
echo /etc/pra/pra.toml >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
# The group that shares the store between operators and the jobs' user (README, "File
# permissions"), and the default store's directory, group-owned, setgid.
set -e
if [ "$1" = configure ]; then
  getent group pra >/dev/null || addgroup --system --quiet pra
  install -d -m 2770 -g pra /var/lib/pra
fi
POSTINST
cat >"$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
# The store's data is the operators' record: removal keeps it, only purge deletes the directory
# when it is empty. The group stays (files elsewhere may still belong to it).
set -e
if [ "$1" = purge ]; then
  rmdir /var/lib/pra 2>/dev/null || true
fi
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/pra_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
