#!/bin/bash
# The seed's safe-cron-wrapper.sh logic (000_3cc5bed96f28d57c.txt, Solution 2), as written there
# but for the lock-file path and the site, which the benchmark passes in. It is the baseline
# `pra check` is compared with.
LOCK=${1:-/etc/app/pra-status.lock}
ACTIVE_SITE=$(cat "$LOCK" | grep ACTIVE_SITE | cut -d= -f2)
CURRENT_SITE=$(echo "${2:-app-sbg-01}" | grep -oE 'rbx|sbg' | tr a-z A-Z)
if [ "$ACTIVE_SITE" != "$CURRENT_SITE" ]; then
  exit 1
fi
exit 0
