#!/usr/bin/env bash
# Find stuck jobs and repair them; meant for cron. Every run appends to a log file.
#
#   */5 * * * *  /path/to/cron-recover.sh [DETECT OPTIONS...]
#
# Arguments are passed to both 'detect-stuck' and 'recover' (e.g. --stall-after 120,
# --server gpu1). Environment:
#   RECOVER_LOG         log file (default: $XDG_STATE_HOME/comfyctl/recover.log)
#   COMFYCTL_BIN        the comfyctl command (default: comfyctl; cron's PATH is short,
#                       so give the full path, e.g. /opt/venv/bin/comfyctl)
#   COMFYCTL_CONFIG, COMFYCTL_LEDGER as for comfyctl itself.
#
# Exit status: 0 nothing stuck or everything repaired; otherwise comfyctl's own code
# (1 problems remain, 3 every server unreachable, 7 ledger corrupt or locked, ...).
set -euo pipefail

comfyctl=${COMFYCTL_BIN:-comfyctl}
log=${RECOVER_LOG:-${XDG_STATE_HOME:-$HOME/.local/state}/comfyctl/recover.log}
mkdir -p "$(dirname "$log")"

note() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log"; }

# detect-stuck --quiet: exit 0 all well, 6 problems found, 3 every bound server down.
status=0
"$comfyctl" detect-stuck --quiet "$@" 2>>"$log" || status=$?
case $status in
  0) note "ok: nothing stuck"; exit 0 ;;
  6) note "problems found; recovering" ;;
  3) note "every server with unfinished jobs is unreachable; retrying next run"; exit 3 ;;
  *) note "detect-stuck failed (exit $status)"; exit "$status" ;;
esac

# recover --nl: one JSON line per action (comfyctl.recovery-action) to the log; exit 0 when
# every problem was resolved, else 1. Overlapping runs never act twice on one job.
status=0
"$comfyctl" recover --resubmit --nl "$@" >>"$log" 2>&1 || status=$?
if [ "$status" -eq 0 ]; then
  note "recovered"
else
  note "recover left problems open (exit $status)"
fi
exit "$status"
