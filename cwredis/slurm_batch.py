"""SLURM's side of cw-slurm: the batch script, and the SLURM commands that submit and watch it.

:mod:`cwredis.slurm` (the ``cw-slurm`` commands) decides *what* to do; this
module is *how* SLURM is asked: ``sbatch`` the script with a private umask
and without URL or secret in its environment, read a job's state and its
steps, and turn a failing SLURM command into one line for the user.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Sequence

from cwredis import config
from cwredis.errors import CwredisError
from cwredis.safefiles import ensure_private_dir, write_private

#: The batch script. A test keeps deploy/slurm/cwredis.sbatch identical to it.
SBATCH_SCRIPT = r"""#!/bin/bash
# cwredis on SLURM: step 0 runs the coordinator with its embedded server (not
# with --workers-only), then one cw-worker per task runs in a step of its own,
# so that each worker can be stopped alone: scancel --signal=TERM JOB.STEP.
#
# Submitted by `cw-slurm start` and `cw-slurm add` (--workers-only); by hand:
#   CWREDIS_HOME=/shared/me/cw sbatch -n 4 cwredis.sbatch                 # coordinator + 4 workers
#   CWREDIS_HOME=/shared/me/cw sbatch -n 8 cwredis.sbatch --workers-only  # 8 more workers
# $CWREDIS_HOME must be on a filesystem shared by every node and the login
# node: the coordinator writes url and secret there; workers and clients read
# them. Its server persists under $CWREDIS_HOME/data, so a new allocation
# brings back the jobs of the last one.
#
# Arguments: [--workers-only] [--lease-timeout SECONDS] [--queue NAME]...
# Each worker runs up to $SLURM_CPUS_PER_TASK jobs at once (sbatch -c).
# The coordinator step uses --overlap: it takes no CPU slot of its own, so
# -n N means N workers on N CPUs; each worker step is --exclusive.
#SBATCH --job-name=cwredis
set -u
umask 077  # logs, the server's files, anything a step writes: private to the user
: "${CWREDIS_HOME:?set CWREDIS_HOME to a directory on the shared filesystem}"
# Only the files in $CWREDIS_HOME say where the server is: a URL or secret
# inherited from the submitting shell would point the coordinator elsewhere.
unset CWREDIS_URL CWREDIS_SECRET

workers_only=0
coordinator_args=()
worker_args=()
while (($#)); do
    case $1 in
        --workers-only) workers_only=1 ;;
        --lease-timeout) coordinator_args+=(--lease-timeout "$2"); shift ;;
        --queue) worker_args+=(--queue "$2"); shift ;;
        *) echo "cwredis.sbatch: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
worker_args+=(--concurrency "${SLURM_CPUS_PER_TASK:-1}")
url_file=$CWREDIS_HOME/url

if ((!workers_only)); then
    # Bind to the address SLURM itself reaches this node at (NodeAddr), resolved.
    node_addr=$(scontrol show node -o "$SLURMD_NODENAME" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
    node_addr=${node_addr:-$SLURMD_NODENAME}
    bind=$(getent ahostsv4 "$node_addr" | awk 'NR == 1 { print $1 }')
    rm -f "$url_file"  # nobody may read a stale URL while the server starts
    srun --nodes=1 --ntasks=1 --nodelist="$SLURMD_NODENAME" --overlap --job-name=cw-coordinator \
        cw-coordinator --data-dir "$CWREDIS_HOME/data" --bind "${bind:-$node_addr}" \
        "${coordinator_args[@]}" &
    coordinator=$!
    until [[ -s $url_file ]]; do
        if ! kill -0 "$coordinator" 2>/dev/null; then
            echo "cwredis.sbatch: the coordinator exited before writing $url_file" >&2
            exit 1
        fi
        sleep 0.2
    done
elif [[ ! -s $url_file ]]; then
    echo "cwredis.sbatch: no $url_file: start the coordinator first (cw-slurm start)" >&2
    exit 1
fi

for ((i = 0; i < SLURM_NTASKS; i++)); do
    srun --nodes=1 --ntasks=1 --exclusive --job-name=cw-worker cw-worker "${worker_args[@]}" &
done

if ((workers_only)); then
    wait
else
    # The job lives as long as its coordinator: `cw-slurm stop` drains the
    # workers (here and in added jobs), then stops the coordinator step.
    wait "$coordinator"
fi
"""

#: Step names the script gives its steps; ``stop`` finds the steps by them.
COORDINATOR_STEP = "cw-coordinator"
WORKER_STEP = "cw-worker"



class SlurmError(CwredisError):
    """A cw-slurm command cannot go on; the message is one line for the user."""


def run(argv: Sequence[str]) -> str:
    """Run a SLURM command; its stdout, or SlurmError with its first stderr line."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is SLURM installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within 60 s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"]
        raise SlurmError(_prefixed(argv[0], lines[0]))
    return done.stdout


def _prefixed(command: str, line: str) -> str:
    """``line`` naming the command that printed it, once."""
    return line if line.startswith(command) else f"{command}: {line}"


def job_state(job_id: str) -> str | None:
    """RUNNING, PENDING, COMPLETED, ... or None once SLURM has forgotten the job."""
    try:
        out = run(["scontrol", "show", "job", "-o", job_id])
    except SlurmError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


def is_active(state: str | None) -> bool:
    return state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


def steps(job_id: str, name: str) -> list[str]:
    """Ids (``JOB.STEP``) of the job's running steps called ``name``."""
    out = run(["squeue", "-h", "-s", "-j", job_id, "-o", "%i|%j"])
    return [line.split("|", 1)[0] for line in out.splitlines() if line.split("|", 1)[-1] == name]


def _script_env() -> dict[str, str]:
    """The job's environment: ours, with this Python's scripts first on PATH, without URL or secret.

    sbatch exports the environment, so ``cw-coordinator``/``cw-worker`` in the
    script resolve to the same installation as this ``cw-slurm``. The URL
    (its password) and the secret stay out: SLURM shows a job's environment
    to more eyes than ours, and the job reads both from the home's files.
    """
    env = {name: value for name, value in os.environ.items()
           if name not in ("CWREDIS_URL", "CWREDIS_SECRET")}
    env["CWREDIS_HOME"] = str(config.cwredis_home())
    bins = [os.path.dirname(os.path.abspath(sys.argv[0])), os.path.dirname(sys.executable)]
    env["PATH"] = os.pathsep.join(dict.fromkeys(bins + env.get("PATH", "").split(os.pathsep)))
    return env


def submit(ntasks: int, script_args: Sequence[str], args: argparse.Namespace, job_name: str) -> str:
    """Write the batch script into $CWREDIS_HOME and sbatch it; return the job id."""
    home = ensure_private_dir(config.cwredis_home(), "$CWREDIS_HOME")
    script = home / "cwredis.sbatch"
    write_private(script, SBATCH_SCRIPT)
    argv = ["sbatch", "--parsable", f"--job-name={job_name}", f"--ntasks={ntasks}",
            f"--output={home / 'slurm-%j.out'}"]
    if args.time:
        argv.append(f"--time={args.time}")
    if args.partition:
        argv.append(f"--partition={args.partition}")
    argv += args.sbatch_arg + [str(script)] + list(script_args)
    try:
        # sbatch hands its umask to the job (SLURM_UMASK), which creates slurm-%j.out with it.
        done = subprocess.run(argv, capture_output=True, text=True, env=_script_env(), timeout=60,
                              umask=0o077)
    except FileNotFoundError:
        raise SlurmError("sbatch not found: is SLURM installed and on PATH?") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise SlurmError(_prefixed("sbatch", lines[-1]))
    return done.stdout.strip().split(";")[0]  # --parsable prints JOBID[;CLUSTER]
