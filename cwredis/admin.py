"""``cw-admin [--url URL] COMMAND [--json]``: look at and repair a cwredis.

Exit codes: 0 success; 1 a user error (unknown job id, a job that is not
failed, ...), with a one-line message on stderr and nothing changed; 2 when
Redis cannot be reached (checked before anything else). Each subcommand is a
small function over :class:`Inspector`, which does the reading.

Whatever came from Redis is printed through :func:`~cwredis.terminal.printable`:
anyone who can write there must not be able to drive our terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

import redis

from . import config, job
from .connection import connect, describe
from .reachability import check_reachable
from .errors import ConfigError
from .keys import DEFAULT_KEYS, Keys
from .scripts import ScriptRefused, Scripts
from .terminal import printable
from .admin_sessions import UserError, add_parsers as add_session_parsers
from . import admin_dashboard, admin_logs
from .cli import quiet_broken_pipe, version_line

EXIT_OK, EXIT_USER, EXIT_UNREACHABLE = 0, 1, 2


class Inspector:
    """Read-only views of the queue state, as the admin JSON shapes them."""

    def __init__(self, client: redis.Redis, keys: Keys = DEFAULT_KEYS) -> None:
        self.redis = client
        self.keys = keys

    def now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros // 1000

    def queue_names(self) -> list[str]:
        names = {self.keys.queue_name(job.text(k) or "") for k in self.redis.scan_iter(self.keys.queue_pattern, count=1000)}
        for info in self.worker_infos():
            names.update(q for q in (info.get("queues") or "").split(",") if q)
        names.add(config.DEFAULT_QUEUE)
        return sorted(names)

    def worker_ids(self, live_only: bool = True) -> list[str]:
        low = f"({self.now_ms()}" if live_only else "-inf"
        return [job.text(w) or "" for w in self.redis.zrangebyscore(self.keys.workers, low, "+inf")]

    def worker_infos(self) -> list[dict[str, str]]:
        ids = self.worker_ids()
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(self.keys.worker(worker_id))
        infos = []
        for worker_id, fields in zip(ids, pipe.execute()):
            info = {job.text(k) or "": job.text(v) or "" for k, v in fields.items()}
            info["id"] = worker_id
            infos.append(info)
        return infos

    def workers(self) -> list[dict[str, Any]]:
        """Live workers as ``cw-admin workers --json`` lists them; garbage in a worker's record reads as empty."""
        return [worker_row(info) for info in self.worker_infos()]

    def running(self) -> int:
        """Jobs whose function has started now (all clients), as ``status`` counts them."""
        return len(self.started())

    def started(self) -> list[tuple[str, list[Any]]]:
        """(worker id, [job id, function digest, progress, spec digest]) of each started job, read from the
        workers' in-flight lists.

        An in-flight list also holds jobs claimed ahead, which wait in the
        worker: their hash carries ``pf`` until start.lua charges the attempt,
        and they do not count. Two pipelined round trips, whatever the number
        of workers; the lists are bounded by the workers' slots and prefetch.
        """
        workers = self.worker_ids(live_only=False)
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in workers:
            pipe.lrange(self.keys.inflight(worker_id), 0, -1)
        held = [(w, job.text(j) or "") for w, ids in zip(workers, pipe.execute()) for j in ids]
        for _, job_id in held:
            pipe.hmget(self.keys.job(job_id), _STARTED_FIELDS)
        started = []
        for (worker_id, job_id), values in zip(held, pipe.execute()):
            state, prefetched, holder = (job.text(v) for v in values[:3])
            if state == job.RUNNING and prefetched is None and holder == worker_id:
                started.append((worker_id, [job_id, *values[3:]]))
        return started

    def running_jobs(self) -> list[dict[str, Any]]:
        """``cw-admin running --json``: each started job, where it runs and for how long."""
        started = self.started()
        infos = {info["id"]: info for info in self.worker_infos()}
        names = self.function_names([job.text(fields[1]) for _, fields in started],
                                    [job.text(fields[3]) for _, fields in started])
        now_ms = self.now_ms()
        rows = []
        for (worker_id, (job_id, _, progress, _)), name in zip(started, names):
            info = infos.get(worker_id, {})
            since_ms = start_times(info.get("started")).get(job_id)
            rows.append({"id": job_id, "function": name, "worker": worker_id, "host": info.get("host") or None,
                         "elapsed_s": None if since_ms is None else round(max(0, now_ms - since_ms) / 1000, 1),
                         "progress": progress_of(job.text(progress))})
        return rows

    def status(self) -> dict[str, Any]:
        names = self.queue_names()
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.llen(self.keys.queue(name))
        pipe.zcard(self.keys.delayed)
        pipe.zcard(self.keys.failed)
        replies = pipe.execute()
        pending = replies[: len(names)]
        delayed, failed = replies[-2:]
        return {
            "queues": {name: {"pending": int(n)} for name, n in zip(names, pending)},
            "running": self.running(),
            "delayed": int(delayed),
            "failed": int(failed),
            "workers": len(self.worker_ids()),
        }

    def function_names(self, digests: Sequence[str | None], specs: Sequence[str | None]) -> list[str | None]:
        """The display name of each job's function: by its own digest (a job queued before the digest moved
        into the spec) or else by the digest its spec names. Two round trips, the first only if needed."""
        digests = list(digests)
        unnamed = [i for i, (digest, spec) in enumerate(zip(digests, specs)) if digest is None and spec]
        if unnamed:
            pipe = self.redis.pipeline(transaction=False)
            for i in unnamed:
                pipe.hget(self.keys.spec(specs[i] or ""), job.SPEC_FUNCTION)
            for i, digest in zip(unnamed, pipe.execute()):
                digests[i] = job.text(digest)
        pipe = self.redis.pipeline(transaction=False)
        for digest in digests:
            pipe.hget(self.keys.blob(digest or "-"), job.BLOB_NAME)
        return [job.text(n) for n in pipe.execute()]

    def records(self, job_ids: Sequence[str]) -> list[job.JobRecord | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        records = [job.JobRecord.from_hash(job_id, fields) if fields else None
                   for job_id, fields in zip(job_ids, pipe.execute())]
        names = self.function_names([r.function if r else None for r in records],
                                    [r.spec if r else None for r in records])
        for record, name in zip(records, names):
            if record is not None:
                record.function = name
        return records

    def show(self, job_id: str) -> dict[str, Any]:
        record = self.records([job_id])[0]
        if record is None:
            raise UserError(f"unknown job id {job_id!r} (never submitted, or finished and expired)")
        return self._row(record) | {"state": record.state}

    def failed(self) -> list[dict[str, Any]]:
        ids = [job.text(j) or "" for j in self.redis.zrange(self.keys.failed, 0, -1)]
        return [self._row(r) for r in self.records(ids) if r is not None]

    @staticmethod
    def _row(record: job.JobRecord) -> dict[str, Any]:
        failed = record.state == job.FAILED
        return {"id": record.id, "function": record.function, "attempts": record.attempts,
                "reason": record.reason if failed else None, "error": record.error if failed else None}


#: Job fields read for each in-flight id: the first three decide whether it started.
_STARTED_FIELDS = [job.STATE, job.PREFETCHED, job.WORKER, job.FUNCTION, job.PROGRESS, job.SPEC]


def start_times(text: str | None) -> dict[str, int]:
    """A worker's published ``started`` field, ``JOBID:EPOCH_MS,...``, as a dict; garbage reads as absent."""
    times = {}
    for item in (text or "").split(","):
        job_id, _, ms = item.rpartition(":")
        if job_id and ms.isdigit():
            times[job_id] = int(ms)
    return times


def progress_of(text: str | None) -> dict[str, Any] | None:
    """The job hash's ``"FRACTION MESSAGE"`` as ``{"fraction", "message"}`` (None: no report yet)."""
    if not text:
        return None
    fraction, _, message = text.partition(" ")
    try:
        return {"fraction": float(fraction), "message": message or None}
    except ValueError:
        return None


def worker_row(info: dict[str, str]) -> dict[str, Any]:
    """A worker's record (``worker_infos``, its ``id`` included) as ``cw-admin workers --json`` shows it."""
    return {"id": info["id"], "host": info.get("host") or None, "pid": job.int_or_none(info.get("pid")),
            "queues": [q for q in (info.get("queues") or "").split(",") if q],
            "concurrency": job.int_or_none(info.get("concurrency")),
            "running": len([j for j in (info.get("running") or "").split(",") if j]),
            "since": job.int_or_none(info.get("since")), "quarantined": info.get("quarantined") == "1"}


# -- subcommands --------------------------------------------------------------------


def cmd_workers(inspector: Inspector, args: argparse.Namespace) -> int:
    rows = inspector.workers()
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    print(f"{'host':<20} {'pid':>7} {'queues':<20} {'slots':>5} {'running':>7} {'up':>8}  state")
    now = time.time()
    for w in rows:
        up = f"{int(now - w['since'])}s" if w["since"] else "-"
        state = "QUARANTINED (wrong secret? see its log)" if w["quarantined"] else "ok"
        print(f"{printable(w['host'] or '-')[:20]:<20} {w['pid'] or '-':>7} "
              f"{printable(','.join(w['queues']))[:20]:<20} {w['concurrency'] or '-':>5} {w['running']:>7} "
              f"{up:>8}  {state}")
    if not rows:
        print("no live workers")
    return EXIT_OK


def cmd_running(inspector: Inspector, args: argparse.Namespace) -> int:
    rows = inspector.running_jobs()
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print("no job is running")
    for r in rows:
        elapsed = "-" if r["elapsed_s"] is None else f"{r['elapsed_s']:.0f}s"
        progress = "" if r["progress"] is None else f"  {r['progress']['fraction']:.0%} {r['progress']['message'] or ''}"
        print(printable(f"{r['id']}  {r['function']}  on {r['host'] or '?'} ({r['worker']})  {elapsed}{progress}"))
    return EXIT_OK


def cmd_status(inspector: Inspector, args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(inspector, args.interval)
    status = inspector.status()
    if args.json:
        print(json.dumps(status))
        return EXIT_OK
    print(_status_text(status, inspector.worker_infos()))
    return EXIT_OK


def _status_text(status: dict[str, Any], workers: list[dict[str, str]], rate: float | None = None) -> str:
    lines = [f"workers {status['workers']}   running {status['running']}   delayed {status['delayed']}   "
             f"failed {status['failed']}" + (f"   {rate:.1f} jobs/s" if rate is not None else "")]
    lines.append("queue                pending")
    for name, q in status["queues"].items():
        lines.append(f"{printable(name):<20} {q['pending']:>7}")
    if workers:
        lines.append("worker                                  host              concurrency  running")
        for w in workers:
            running = printable(w.get("running", "") or "-")
            lines.append(f"{printable(w['id']):<39} {printable(w.get('host', '?')):<17} "
                         f"{printable(w.get('concurrency', '?')):>11}  {running}")
    return "\n".join(lines)


def _watch(inspector: Inspector, interval: float) -> int:
    previous: tuple[float, int] | None = None
    try:
        while True:
            status = inspector.status()
            done = int(inspector.redis.hget(inspector.keys.stats, "done") or 0)
            now = time.monotonic()
            rate = (done - previous[1]) / (now - previous[0]) if previous else None
            previous = (now, done)
            sys.stdout.write("\x1b[H\x1b[2J" + _status_text(status, inspector.worker_infos(), rate) + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_failed(inspector: Inspector, args: argparse.Namespace) -> int:
    rows = inspector.failed()
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no failed jobs")
    else:
        for row in rows:
            print(printable(f"{row['id']}  {row['function']}  attempts={row['attempts']}  "
                            f"{row['reason']}: {row['error']}"))
    return EXIT_OK


def cmd_show(inspector: Inspector, args: argparse.Namespace) -> int:
    row = inspector.show(args.jobid)
    if args.json:
        print(json.dumps({k: row[k] for k in ("id", "state", "function", "attempts", "reason", "error")}))
        return EXIT_OK
    for key in ("id", "state", "function", "attempts", "reason", "error"):
        print(f"{key:<9} {printable(row[key]) if row[key] is not None else '-'}")
    record = inspector.records([args.jobid])[0]
    if record is not None and record.progress and record.state == job.RUNNING:
        print(f"progress  {printable(record.progress)}")
    if record is not None and record.state == job.FAILED:
        if record.output:
            print("output (tail):\n" + printable(record.output.rstrip(), multiline=True))
        if record.traceback:
            print("traceback:\n" + printable(record.traceback.rstrip(), multiline=True))
    return EXIT_OK


def change_failed(inspector: Inspector, action: str, job_ids: Sequence[str]) -> int:
    """``requeued`` or ``purged`` the named failed jobs (none named: every failed job); how many.
    UserError, nothing changed, for a named job that is unknown or not failed (cw-admin and the dashboard)."""
    scripts = Scripts(inspector.redis, inspector.keys)
    run: Callable[..., int] = scripts.requeue_failed if action == "requeued" else scripts.purge_failed
    try:
        return run(inspector.redis, job_ids)
    except ScriptRefused as exc:
        raise UserError(f"{exc.job_id}: {exc.why}; nothing changed") from None


def _change_failed(inspector: Inspector, args: argparse.Namespace, action: str) -> int:
    count = change_failed(inspector, action, args.jobids)
    print(json.dumps({action: count}) if args.json else f"{action} {count} job(s)")
    return EXIT_OK


def cmd_requeue_failed(inspector: Inspector, args: argparse.Namespace) -> int:
    return _change_failed(inspector, args, "requeued")


def cmd_purge_failed(inspector: Inspector, args: argparse.Namespace) -> int:
    """Deletes only what was named: ids, or ``--all`` (a bare purge-failed once deleted every client's)."""
    if bool(args.jobids) == args.all:
        raise UserError("purge-failed needs JOBID... or --all (not both); nothing changed")
    return _change_failed(inspector, args, "purged")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser = argparse.ArgumentParser(prog="cw-admin", parents=[common])
    parser.add_argument("--url", default=None, help="Redis URL (default: $CWREDIS_URL, $CWREDIS_HOME/url, localhost)")
    parser.add_argument("--version", action="version", version=version_line("cw-admin"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="inspect and repair cwredis queues:")
    status = sub.add_parser("status", parents=[common], help="queues, running, delayed, failed, live workers")
    status.add_argument("--watch", action="store_true", help="refresh a live view until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (--watch)")
    status.set_defaults(run=cmd_status)
    sub.add_parser("failed", parents=[common], help="list failed jobs").set_defaults(run=cmd_failed)
    requeue = sub.add_parser("requeue-failed", parents=[common], help="put failed jobs back (all, or the named)")
    requeue.add_argument("jobids", nargs="*", metavar="JOBID")
    requeue.set_defaults(run=cmd_requeue_failed)
    purge = sub.add_parser("purge-failed", parents=[common], help="delete the named failed jobs, or --all")
    purge.add_argument("jobids", nargs="*", metavar="JOBID")
    purge.add_argument("--all", action="store_true", help="delete every failed job (of all clients)")
    purge.set_defaults(run=cmd_purge_failed)
    add_session_parsers(sub, common)
    sub.add_parser("workers", parents=[common], help="live workers: host, pid, queues, quarantined"
                   ).set_defaults(run=cmd_workers)
    sub.add_parser("running", parents=[common], help="jobs running now: where, for how long, progress"
                   ).set_defaults(run=cmd_running)
    show = sub.add_parser("show", parents=[common], help="one job")
    show.add_argument("jobid", metavar="JOBID")
    show.set_defaults(run=cmd_show)
    admin_logs.add_parsers(sub, common)
    admin_dashboard.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    with quiet_broken_pipe():
        return _main(argv)
    return EXIT_OK  # our output pipe closed (| head): the reader has what it wanted


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        url = config.resolve_url(args.url)
        client = connect(url, "admin")
        check_reachable(client, url)
    except ConfigError as exc:
        print(f"cw-admin: {printable(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        return int(args.run(Inspector(client), args))
    except UserError as exc:
        print(f"cw-admin: {printable(exc)}", file=sys.stderr)
        return EXIT_USER
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"cw-admin: lost Redis at {config.mask_url(url)}: {printable(describe(exc))}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
