"""``cw-admin sessions | drop-session NAME | cancel JOBID... | --session NAME``.

A session's jobs are listed, in the order they were created, in one Redis
list (``Keys.session_jobs``); ``Keys.sessions`` holds each session's last
activity. Everything here reads those in pages of ``PAGE`` ids with pipelined
commands, so a session of 100,000 jobs costs a few hundred round trips, not
100,000. Cancelling goes through cancel.lua (one atomic step per job), the
same as ``ClientThread.cancel``.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any, Iterator

from . import job
from .scripts import Scripts
from .session import check_name
from .terminal import printable

#: Job ids read (and acted on) per round trip.
PAGE = 1000

#: What a job's state counts as in ``sessions`` (delayed jobs wait to start: pending).
COUNTED_AS = {job.PENDING: "pending", job.DELAYED: "pending", job.RUNNING: "running", job.DONE: "done",
              job.FAILED: "failed"}


class UserError(Exception):
    """A mistake in what the user asked for (cw-admin exits 1, nothing changed)."""


def session_ids(inspector: Any, name: str) -> Iterator[list[str]]:
    """The ids of a session's jobs, a page at a time."""
    key = inspector.keys.session_jobs(name)
    start = 0
    while True:
        page = [job.text(i) or "" for i in inspector.redis.lrange(key, start, start + PAGE - 1)]
        if not page:
            return
        yield page
        start += len(page)


def summary(inspector: Any, name: str, last_activity_ms: float) -> dict[str, Any] | None:
    """One row of ``sessions``; None when the session's list has expired (nothing left of it)."""
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    jobs = 0
    for page in session_ids(inspector, name):
        pipe = inspector.redis.pipeline(transaction=False)
        for job_id in page:
            pipe.hmget(inspector.keys.job(job_id), job.STATE, job.PREFETCHED, job.SPEC)
        for state, prefetched, spec in pipe.execute():
            jobs += 1
            if (counted := COUNTED_AS.get(job.state_of(state, spec) or "")) is not None:
                # Claimed ahead by a worker but not started: still waiting, as cw-admin status counts it.
                counts["pending" if counted == "running" and prefetched else counted] += 1
    if not jobs:
        return None
    when = datetime.datetime.fromtimestamp(last_activity_ms / 1000, datetime.timezone.utc)
    return {"name": name, "jobs": jobs, **counts, "last_activity": when.isoformat(timespec="seconds")}


def cmd_sessions(inspector: Any, args: argparse.Namespace) -> int:
    rows = []
    for raw_name, score in inspector.redis.zrange(inspector.keys.sessions, 0, -1, withscores=True):
        row = summary(inspector, job.text(raw_name) or "", score)
        if row is not None:
            rows.append(row)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no sessions")
    else:
        print(f"{'session':<30} {'jobs':>7} {'pending':>7} {'running':>7} {'done':>7} {'failed':>7}  last activity")
        for r in rows:
            print(f"{printable(r['name'])[:30]:<30} {r['jobs']:>7} {r['pending']:>7} {r['running']:>7} "
                  f"{r['done']:>7} {r['failed']:>7}  {r['last_activity']}")
    return 0


def cancel_ids(inspector: Any, job_ids: list[str]) -> int:
    """Cancel jobs (running ones stopped through their worker); how many were pending or running."""
    scripts = Scripts(inspector.redis, inspector.keys)
    words = scripts.cancel(inspector.redis, job_ids, stop_running=True)
    return sum(1 for word in words if word in ("cancelled", "stopping"))


def cancel_named(inspector: Any, job_ids: list[str]) -> int:
    """Cancel the named jobs (as :func:`cancel_ids`); UserError, nothing cancelled, if one is unknown."""
    pipe = inspector.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.exists(inspector.keys.job(job_id))
    unknown = [j for j, exists in zip(job_ids, pipe.execute()) if not exists]
    if unknown:
        raise UserError(f"unknown job id {printable(unknown[0])!r} (never submitted, or finished and "
                        "expired); nothing cancelled")
    return cancel_ids(inspector, job_ids)


def cmd_cancel(inspector: Any, args: argparse.Namespace) -> int:
    if bool(args.jobids) == bool(args.session):
        raise UserError("name the jobs to cancel (JOBID...) or give --session NAME, not both")
    if args.session:
        name = _session_name(args.session)
        if not inspector.redis.exists(inspector.keys.session_jobs(name)):
            raise UserError(f"no session {name!r} (never used, dropped, or expired)")
        cancelled = sum(cancel_ids(inspector, page) for page in session_ids(inspector, name))
    else:
        cancelled = cancel_named(inspector, list(args.jobids))
    print(json.dumps({"cancelled": cancelled}) if args.json else f"cancelled {cancelled} job(s)")
    return 0


def cmd_drop_session(inspector: Any, args: argparse.Namespace) -> int:
    """Cancel the session's unfinished jobs, then delete every job record (and kept outcome) of it."""
    name = _session_name(args.name)
    key = inspector.keys.session_jobs(name)
    if not inspector.redis.exists(key):
        raise UserError(f"no session {name!r} (never used, dropped, or expired)")
    dropped = 0
    for page in session_ids(inspector, name):
        cancel_ids(inspector, page)  # a running job's worker still stops it; its outcome is refused
        pipe = inspector.redis.pipeline(transaction=False)
        for job_id in page:
            pipe.delete(inspector.keys.job(job_id))
        pipe.zrem(inspector.keys.failed, *page)
        dropped += sum(pipe.execute()[:-1])
    inspector.redis.delete(key)
    inspector.redis.zrem(inspector.keys.sessions, name)
    print(json.dumps({"dropped": dropped}) if args.json else f"dropped session {printable(name)}: "
          f"{dropped} job(s)")
    return 0


def _session_name(name: str) -> str:
    try:
        return check_name(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The subcommands of this module, on cw-admin's parser."""
    sub.add_parser("sessions", parents=[common], help="sessions: jobs pending, running, done, failed"
                   ).set_defaults(run=cmd_sessions)
    drop = sub.add_parser("drop-session", parents=[common], help="cancel a session's jobs and delete its outcomes")
    drop.add_argument("name", metavar="NAME")
    drop.set_defaults(run=cmd_drop_session)
    cancel = sub.add_parser("cancel", parents=[common], help="cancel jobs (pending: never run; running: stopped)")
    cancel.add_argument("jobids", nargs="*", metavar="JOBID")
    cancel.add_argument("--session", metavar="NAME", help="every unfinished job of this session")
    cancel.set_defaults(run=cmd_cancel)
