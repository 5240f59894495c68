"""``cw-admin logs [-f] JOBID``: what a job printed, while it runs and after it failed.

A running job's worker keeps the tail of its output (the last
``config.OUTPUT_TAIL_BYTES``, written at most twice a second) in the job's
``lo`` field; a failed job also keeps the tail of its final output (``o``).
A done job's output went to its client and is not kept. ``-f`` polls until
the job ends, printing what is new each time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import job
from .admin_sessions import UserError
from .terminal import printable

#: Seconds between two reads with ``-f`` (the worker writes at most every 0.5 s).
FOLLOW_INTERVAL_S = 0.5
#: Characters of the text already shown that must match to place a rolled-over tail.
ANCHOR_CHARS = 256
#: States in which a job may still print.
LIVE_STATES = (job.PENDING, job.RUNNING, job.DELAYED)


def new_text(shown: str, tail: str) -> str:
    """What ``tail`` (the latest bounded tail of a growing output) adds to ``shown`` (an earlier tail)."""
    if tail.startswith(shown):
        return tail[len(shown):]
    anchor = shown[-ANCHOR_CHARS:]
    at = tail.rfind(anchor) if anchor else -1
    return tail[at + len(anchor):] if at >= 0 else tail


def read(inspector: Any, job_id: str) -> tuple[str, str]:
    """(state, output so far) of a job; UserError if there is no such job."""
    raw_state, spec, live, final = inspector.redis.hmget(
        inspector.keys.job(job_id), job.STATE, job.SPEC, job.LIVE_OUTPUT, job.OUTPUT)
    state, live, final = job.state_of(raw_state, spec), job.text(live), job.text(final)
    if state is None:
        raise UserError(f"unknown job id {printable(job_id)!r} (never submitted, or finished and expired)")
    live, final = live or "", final or ""
    return state, live + new_text(live, final) if final else live


def cmd_logs(inspector: Any, args: argparse.Namespace) -> int:
    state, output = read(inspector, args.jobid)
    if not args.json:
        sys.stdout.write(printable(output, multiline=True))
        sys.stdout.flush()
    try:
        while args.follow and state in LIVE_STATES:
            time.sleep(FOLLOW_INTERVAL_S)
            state, latest = read(inspector, args.jobid)
            if not args.json:
                sys.stdout.write(printable(new_text(output, latest), multiline=True))
                sys.stdout.flush()
            output = latest
    except KeyboardInterrupt:
        pass
    if args.json:
        print(json.dumps({"id": args.jobid, "state": state, "output": output}))
    elif state == job.DONE and not output:
        print(f"cw-admin: job {printable(args.jobid)} is done; its output went to its client", file=sys.stderr)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``logs`` subcommand, on cw-admin's parser."""
    logs = sub.add_parser("logs", parents=[common], help="what a job printed so far (-f: follow it)")
    logs.add_argument("jobid", metavar="JOBID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the job ends")
    logs.set_defaults(run=cmd_logs)
