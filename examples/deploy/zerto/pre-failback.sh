#!/bin/bash
# Zerto pre-failback script (seed Solution 4), run before the primary's VMs boot.
# Unlike the seed's version it needs no SSH into the VMs: the primary's crons will consult the
# active-site record and stay standby until the plan flips it.
set -euo pipefail
export PRA_CONFIG=${PRA_CONFIG:-/etc/pra/pra.toml}
by=${ZERTO_OPERATOR:-zerto}

# Seed steps 7-9: primary restored, replication synced, primary VMs starting (fenced).
pra plan start-failback --by "$by" --reason "zerto pre-failback"
pra plan apply replication-synced --by "$by"
pra plan apply primary-started-fenced --by "$by"
pra plan status
