#!/usr/bin/env bash
# Submit a labelled batch to several servers, follow it to the end, print its output URLs.
#
#   batch.sh WORKFLOW SERVER [SERVER...]
#
# Each job goes to the reachable server with the shortest queue and stays bound to it.
# stdout: the batch's output URLs, one per line (e.g. | xargs -n1 curl -sO); progress
# and state lines go to stderr. Environment:
#   COUNT         jobs to submit (default 4), each with a fresh seed
#   BATCH         the batch label (default: a UTC timestamp); jobs get label batch=$BATCH
#   TIMEOUT       seconds to wait for the whole batch (default 3600)
#   COMFYCTL_BIN  the comfyctl command (default: comfyctl)
#
# Exit status: 0 when every job succeeded, else watch's code (1 a job failed, 5 timeout, ...);
# the URLs of the jobs that did succeed are printed either way.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 WORKFLOW SERVER [SERVER...]" >&2
  exit 2
fi
comfyctl=${COMFYCTL_BIN:-comfyctl}
workflow=$1
shift
servers=()
for server in "$@"; do servers+=(--server "$server"); done
batch=${BATCH:-$(date -u +%Y%m%dT%H%M%SZ)}

echo "batch=$batch" >&2
status=0
"$comfyctl" submit "$workflow" "${servers[@]}" --count "${COUNT:-4}" --vary-seed \
    --label "batch=$batch" \
  | "$comfyctl" watch - --timeout "${TIMEOUT:-3600}" >&2 \
  || status=$?

"$comfyctl" history --label "batch=$batch" --outputs
exit "$status"
