#!/usr/bin/env bash
# The demo run by `make demo`: a scratch embedded store, the active site shown, activated and flipped.
set -euo pipefail
PRA=${1:-target/release/pra}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/pra-demo.XXXXXX")
export PRA_STORE="sqlite://$scratch/state.db" PRA_SITES="rbx,sbg"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "A fresh store: no site is active, nobody may run jobs (deny by default)"
"$PRA" site show
"$PRA" check --site rbx || echo "(exit $?: rbx is standby)"

step "Activate the primary, rbx"
"$PRA" site activate rbx --expect-token 0 --by demo --reason "initial activation"
"$PRA" check --site rbx && echo "(exit 0: rbx may run its crons)"
"$PRA" check --site sbg || echo "(exit $?: sbg stays standby)"

step "Failover: break before make — deactivate rbx, then activate sbg"
"$PRA" site deactivate --expect-token 1 --by demo --reason "rbx incident"
"$PRA" site activate sbg --expect-token 2 --by demo --reason "failover to sbg"
"$PRA" check --site rbx || echo "(exit $?: rbx is fenced off)"

step "A stale operator (still thinks token 1) is refused"
"$PRA" site deactivate --expect-token 1 --by late-operator || echo "(exit $?: conflict, nothing changed)"

step "The audit journal, and its hash chain"
"$PRA" journal
"$PRA" journal --verify
echo
echo "scratch store: $scratch/state.db"
