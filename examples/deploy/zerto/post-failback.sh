#!/bin/bash
# Zerto post-failback script, run after the failback is committed in Zerto and the primary was
# validated by a person (seed step 10 is a manual gate: pass the operator's name).
#   post-failback.sh alice
set -euo pipefail
export PRA_CONFIG=${PRA_CONFIG:-/etc/pra/pra.toml}
operator=${1:?usage: post-failback.sh OPERATOR}

pra plan apply primary-validated --operator "$operator" --by "$operator"
pra plan apply commit-failback --by "$operator"          # the secondary loses the role
pra plan apply drained --by "$operator"                  # waits for its running jobs
pra plan apply traffic-on-primary --by "$operator"       # after the DNS/LB switch
pra plan report
