#!/bin/sh
# The cheapest way for an existing cron script to ask "may this site run jobs?":
# one `pra check` (a single SQLite read, a few milliseconds for the whole process).
# Exit 0: this site is active. 1: standby. Anything else: the store could not be read — do not
# run (fail closed). Prefer `pra run`, which also registers the run for drains and reports.
pra check >/dev/null 2>&1
case $? in
  0) exec /usr/local/bin/ma-tache-metier.sh ;;
  1) exit 0 ;;                                   # standby: nothing to do
  *) logger -t pra "store unreadable: job not run"; exit 75 ;;
esac
