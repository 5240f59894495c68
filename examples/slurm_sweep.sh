#!/usr/bin/env bash
# The SLURM flow end to end, from a login node with a shared home directory:
# start an allocation (coordinator + N workers), run the sweep from here with
# no URL (clients find $CWREDIS_HOME/url), stop gracefully.
#
#   examples/slurm_sweep.sh [WORKERS] [sweep.py args...]
#
# Set CWREDIS_HOME to a directory on the shared filesystem (default ~/.cwredis);
# pass partition or time limits through CW_SLURM_ARGS, e.g.
#   CW_SLURM_ARGS="--partition short --time 01:00:00" examples/slurm_sweep.sh 64
set -euo pipefail
workers=${1:-4}
shift || true
here=$(cd "$(dirname "$0")" && pwd)

# shellcheck disable=SC2086  # CW_SLURM_ARGS is a list of arguments
cw-slurm start -n "$workers" ${CW_SLURM_ARGS:-}
trap 'cw-slurm stop' EXIT       # graceful: workers finish their jobs first
cw-slurm status
python "$here/sweep.py" "$@"
