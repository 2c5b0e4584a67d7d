#!/bin/sh
# Offsite backup throughput (BENCHMARKS.md "Offsite backups"): upload and restore of a large
# database to a local S3 server (moto, from .venv) with `pra`, against `aws s3 cp` of the same
# file. Usage: benches/offsite.sh [SIZE_MB] (default 1024); PRA=path/to/pra (default
# target/release/pra). moto keeps objects in memory: count on ~3x SIZE_MB of RAM.
set -eu
size_mb=${1:-1024}
pra=${PRA:-target/release/pra}
moto=${PRA_MOTO_BIN:-.venv/bin/moto_server}
port=${PORT:-25123}
dir=$(mktemp -d)
trap 'kill "$moto_pid" 2>/dev/null; rm -rf "$dir"' EXIT
"$moto" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
moto_pid=$!
until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
curl -sf -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export PRA_STORE="sqlite://$dir/state.db" PRA_SITE=rbx PRA_SITES=rbx,sbg PRA_DB="$dir/app.db" \
  PRA_BACKUP_DIR="$dir/backup" PRA_BACKUP_TARGET=s3://bench/pra \
  PRA_BACKUP_S3_ENDPOINT="http://127.0.0.1:$port" PRA_CONFIG="$dir/pra.toml"
: >"$dir/pra.toml"
python3 - "$dir/app.db" "$size_mb" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TABLE blobs (b BLOB)")
n = int(sys.argv[2]) * 1024 * 1024 // 4000
c.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) "
          "INSERT INTO blobs SELECT randomblob(4000) FROM c", (n,))
c.commit()
PY
"$pra" site activate rbx --expect-token 0 >/dev/null
bytes=$(stat -c %s "$dir/app.db")
mbps() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.1f MB/s (%.2f s)", b / 1048576 / s, s }'; }
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }
echo "database: $bytes bytes"
# pra: the local backup first (timed apart), then the upload alone, then the restore.
t0=$(now); "$pra" backup --local-only >/dev/null; t1=$(now)
echo "pra backup (local snapshot, quick_check, sha256):  $(mbps "$(el "$t0" "$t1")")"
t0=$(now); "$pra" backup >/dev/null; t1=$(now)
echo "pra backup + upload, plaintext:                  $(mbps "$(el "$t0" "$t1")")"
echo "correct horse battery staple" >"$dir/pass"
t0=$(now); PRA_BACKUP_AGE_PASSPHRASE_FILE="$dir/pass" "$pra" backup >/dev/null; t1=$(now)
echo "pra backup + upload, age (scrypt):               $(mbps "$(el "$t0" "$t1")")"
t0=$(now); PRA_BACKUP_AGE_PASSPHRASE_FILE="$dir/pass" "$pra" restore --remote --latest --no-safety-copy >/dev/null; t1=$(now)
echo "pra restore --remote (age, checksum, quick_check): $(mbps "$(el "$t0" "$t1")")"
if command -v aws >/dev/null; then
  t0=$(now); aws --endpoint-url "http://127.0.0.1:$port" s3 cp --quiet "$dir/app.db" s3://bench/aws/app.db; t1=$(now)
  echo "aws s3 cp upload:                                $(mbps "$(el "$t0" "$t1")")"
  t0=$(now); aws --endpoint-url "http://127.0.0.1:$port" s3 cp --quiet s3://bench/aws/app.db "$dir/aws.db"; t1=$(now)
  echo "aws s3 cp download:                              $(mbps "$(el "$t0" "$t1")")"
else
  echo "aws s3 cp: not installed (pip install awscli)"
fi
