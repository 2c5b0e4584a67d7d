#!/bin/sh
# make test-monitoring: promtool checks and tests the rules; the dashboard is JSON; every pra_*
# name in the rules and the dashboard is one `pra metrics` writes (the list in METRICS, which
# tests/cli.rs checks against `pra metrics` itself).
set -eu
cd "$(dirname "$0")"
command -v promtool >/dev/null || { echo "promtool missing: apt-get install prometheus (make apt-tools)" >&2; exit 1; }
promtool check rules pra.rules.yml
promtool test rules pra.rules.test.yml
python3 -m json.tool grafana-dashboard.json >/dev/null
unknown=$(grep -ohE 'pra_[a-z_]+' pra.rules.yml grafana-dashboard.json | grep -v '^pra_job$' | sort -u | grep -vxF -f METRICS || true)
if [ -n "$unknown" ]; then
  echo "not in METRICS (not written by pra metrics): $unknown" >&2
  exit 1
fi
echo "monitoring: rules, tests, dashboard and metric names OK"
