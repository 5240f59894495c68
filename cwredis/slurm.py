"""cw-slurm: a cwredis coordinator and its workers inside SLURM allocations.

``cw-slurm start -n N`` submits one batch job (:mod:`cwredis.slurm_batch`'s script, also
shipped as ``deploy/slurm/cwredis.sbatch``) whose step 0 runs ``cw-coordinator`` with
its embedded server bound to the node's address, and whose other steps run
one ``cw-worker`` each. The coordinator writes ``$CWREDIS_HOME/url`` and
``$CWREDIS_HOME/secret``; with ``$CWREDIS_HOME`` on the shared filesystem,
clients and workers anywhere (the login node included) find the server with
no arguments, by the contract's URL resolution.

Why steps, one per worker: each worker can then be signalled on its own
(``scancel --signal=TERM JOB.STEP``), which is how ``stop`` drains workers
before it stops the coordinator; and SLURM accounts for every process.

The job ids are kept in ``$CWREDIS_HOME/slurm.json``::

    {"job": "123", "worker_jobs": ["124"], "log": ".../slurm-123.out"}

Commands: ``start``, ``status``, ``stop``, ``add``. Errors are one line on
stderr, exit 1 (argparse's usage errors exit 2).

Secrets stay out of sight: ``status`` asks Redis in-process (no ``cw-admin
--url URL`` in anyone's ``ps``); sbatch gets neither ``CWREDIS_URL`` nor
``CWREDIS_SECRET`` (the job reads the files in the home) and runs with
``umask 077``, which SLURM applies to ``slurm-%j.out`` too; every file here
is written through :mod:`cwredis.safefiles`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import redis

from cwredis import config
from cwredis.cli import version_line
from cwredis.inspector import Inspector
from cwredis.connection import connect
from cwredis.reachability import check_reachable
from cwredis.errors import ConfigError
from cwredis.safefiles import read_private, write_private
from cwredis.server import discard_password
from cwredis.slurm_batch import (COORDINATOR_STEP, WORKER_STEP, SlurmError, is_active, job_state, run, steps,
                                 submit)

#: How long ``start`` waits for the coordinator's URL file, queue wait included.
DEFAULT_START_WAIT_S = 600.0
#: How often job state and files are polled.
POLL_S = 0.2


# ------------------------------------------------------------------ state files


def state_file() -> Path:
    return config.cwredis_home() / "slurm.json"


def read_state() -> dict[str, Any]:
    """The recorded job ids; SlurmError when no allocation was started from this home."""
    content = read_private(state_file(), "cw-slurm state file")
    if content is None:
        raise SlurmError(f"no allocation recorded in {state_file()}: run `cw-slurm start` first")
    try:
        state: dict[str, Any] = json.loads(content)
    except ValueError as exc:
        raise SlurmError(f"{state_file()} is not valid JSON: {exc}") from None
    state.setdefault("worker_jobs", [])
    return state


def write_state(state: dict[str, Any]) -> None:
    write_private(state_file(), json.dumps(state, indent=1) + "\n")  # atomic: `status` never reads half


def read_url() -> str:
    """The content of ``$CWREDIS_HOME/url``, or "" while there is none (the coordinator writes it atomically)."""
    content = read_private(config.url_file(), "URL file")
    return content.decode(errors="replace").strip() if content is not None else ""


def master_host() -> str:
    """The host of the URL in ``$CWREDIS_HOME/url``: the node running the coordinator.

    Kept from cluster-workers, where scripts used it to reach the master node.
    """
    url = read_url()
    if not url:
        raise SlurmError(f"no {config.url_file()}: is the coordinator running?")
    host = urlsplit(url).hostname
    if not host:
        raise SlurmError(f"{config.url_file()} holds no host: {config.mask_url(url)}")
    return host


def live_workers(url: str) -> int | None:
    """The live worker count that ``cw-admin status`` reports, or None if Redis cannot be asked.

    Asked in this process: a ``cw-admin --url URL`` subprocess would show the
    password to every ``ps`` on the login node.
    """
    try:
        client = connect(url, "admin")
    except ConfigError:
        return None
    try:
        check_reachable(client, url)
        return int(Inspector(client).status()["workers"])
    except (ConfigError, redis.RedisError):
        return None
    finally:
        client.close()


# ------------------------------------------------------------------- commands


def cmd_start(args: argparse.Namespace) -> int:
    """Submit coordinator + workers; return once the coordinator's URL file is fresh."""
    try:
        old = read_state()
    except SlurmError:
        old = None
    if old and is_active(job_state(old["job"])):
        raise SlurmError(f"job {old['job']} is still running from {config.cwredis_home()}: "
                         "`cw-slurm stop` it first")
    url_file = config.url_file()
    url_file.unlink(missing_ok=True)  # a stale URL must not pass for the new server
    # A new allocation, a new password: one that leaked lasts no longer than its allocation.
    discard_password(config.cwredis_home() / "data")  # the script's --data-dir
    script_args = ["--lease-timeout", str(args.lease_timeout)] if args.lease_timeout else []
    for queue in args.queue:
        script_args += ["--queue", queue]
    job_id = submit(args.n, script_args, args, "cwredis")
    log = str(config.cwredis_home() / f"slurm-{job_id}.out")
    write_state({"job": job_id, "worker_jobs": [], "log": log, "script_args": script_args})
    print(f"submitted job {job_id}; waiting for the coordinator ({log})", file=sys.stderr)
    deadline = time.monotonic() + args.wait
    last_state = None
    while not read_url():
        state = job_state(job_id)
        if state != last_state:
            print(f"job {job_id}: {state}", file=sys.stderr)
            last_state = state
        if not is_active(state):
            raise SlurmError(f"job {job_id} ended ({state or 'gone'}) before the coordinator "
                             f"wrote {url_file}; see {log}")
        if time.monotonic() > deadline:
            raise SlurmError(f"job {job_id} is {state}; no URL after {args.wait:g} s "
                             "(it stays queued; see `cw-slurm status`)")
        time.sleep(POLL_S)
    print(config.mask_url(read_url()))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Submit a worker-only job that finds the running coordinator through $CWREDIS_HOME/url."""
    state = read_state()
    if not is_active(job_state(state["job"])) or not read_url():
        raise SlurmError(f"the coordinator job {state['job']} is not running: `cw-slurm start` first")
    script_args = ["--workers-only"]
    for queue in args.queue or _queues(state):
        script_args += ["--queue", queue]
    job_id = submit(args.n, script_args, args, "cwredis-workers")
    state["worker_jobs"].append(job_id)
    write_state(state)
    print(job_id)
    return 0


def _queues(state: dict[str, Any]) -> list[str]:
    """The --queue names the coordinator job was started with, for added workers."""
    script_args = state.get("script_args", [])
    return [script_args[i + 1] for i, arg in enumerate(script_args[:-1]) if arg == "--queue"]


def cmd_status(args: argparse.Namespace) -> int:
    """Job states, masked URL and live workers (asked with ``cw-admin status``)."""
    state = read_state()
    main_state = job_state(state["job"])
    url = read_url()
    workers = live_workers(url) if url and is_active(main_state) else None
    report = {
        "job": state["job"],
        "state": main_state or "GONE",
        "url": config.mask_url(url) if url else None,
        "workers": workers,
        "worker_jobs": {job: job_state(job) or "GONE" for job in state["worker_jobs"]},
        "log": state.get("log"),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"job {report['job']}: {report['state']}  (log: {report['log']})")
        for job, job_st in report["worker_jobs"].items():
            print(f"worker job {job}: {job_st}")
        print(f"url: {report['url'] or '-'}")
        print(f"workers: {'unknown' if workers is None else workers}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Drain the workers (SIGTERM: they finish their jobs), then stop the coordinator step."""
    state = read_state()
    jobs = [state["job"]] + state["worker_jobs"]
    active = [job for job in jobs if is_active(job_state(job))]
    if not active:
        print(f"job {state['job']} is not running", file=sys.stderr)
        return 0
    if args.force:
        run(["scancel", *active])
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    signalled: set[str] = set()
    while not args.force:
        # Re-list every round: the batch script may still be launching steps.
        pending_steps = []
        for job in active:
            for step in steps(job, WORKER_STEP):
                pending_steps.append(step)
                if step not in signalled:
                    run(["scancel", "--signal=TERM", step])
                    signalled.add(step)
        if not pending_steps:
            break
        _check_deadline(deadline, f"{len(pending_steps)} worker steps still finishing their jobs")
        time.sleep(POLL_S)
    if not args.force and state["job"] in active:
        print(f"workers stopped ({len(signalled)} steps); stopping the coordinator", file=sys.stderr)
        for step in steps(state["job"], COORDINATOR_STEP):
            run(["scancel", "--signal=TERM", step])
    while any(is_active(job_state(job)) for job in active):
        _check_deadline(deadline, "the jobs have not ended")
        time.sleep(POLL_S)
    return 0


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise SlurmError(f"timed out: {what} (`cw-slurm stop --force` cancels them)")


# ------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cw-slurm",
        description="Run a cwredis coordinator and workers in SLURM allocations. "
        "State lives in $CWREDIS_HOME (default ~/.cwredis), which must be on the shared filesystem.")
    parser.add_argument("--version", action="version", version=version_line("cw-slurm"))
    sub = parser.add_subparsers(dest="command", required=True)

    def submit_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", type=int, required=True, metavar="N", help="number of workers (one SLURM task each)")
        p.add_argument("--time", help="sbatch --time (wall-clock limit)")
        p.add_argument("--partition", help="sbatch --partition")
        p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                       help="extra sbatch argument, e.g. --sbatch-arg=--cpus-per-task=4 (repeatable)")
        p.add_argument("--queue", action="append", default=[], metavar="NAME",
                       help="queue the workers serve (repeatable; default: default)")

    start = sub.add_parser("start", help="submit a job running the coordinator and N workers")
    submit_options(start)
    start.add_argument("--lease-timeout", type=float, metavar="SECONDS",
                       help="the coordinator's lease timeout (default 30)")
    start.add_argument("--wait", type=float, default=DEFAULT_START_WAIT_S, metavar="SECONDS",
                       help="how long to wait for the coordinator, queueing included (default %(default)g)")
    start.set_defaults(func=cmd_start)

    add = sub.add_parser("add", help="submit a job running M more workers for the running coordinator")
    submit_options(add)
    add.set_defaults(func=cmd_add)

    status = sub.add_parser("status", help="job state, URL (password masked), live workers")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)

    stop = sub.add_parser("stop", help="stop workers gracefully, then the coordinator")
    stop.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default: wait)")
    stop.add_argument("--force", action="store_true", help="scancel the jobs at once (running jobs are requeued later)")
    stop.set_defaults(func=cmd_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1:
        print("cw-slurm: -n must be at least 1", file=sys.stderr)
        return 1
    try:
        status: int = args.func(args)
        return status
    except (SlurmError, ConfigError) as exc:
        print(f"cw-slurm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
