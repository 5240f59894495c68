"""``cw-admin [--url URL] COMMAND [--json]``: look at and repair a cwredis.

Exit codes: 0 success; 1 a user error (unknown job id, a job that is not
failed, ...), with a one-line message on stderr and nothing changed; 2 when
Redis cannot be reached (checked before anything else). Each subcommand is a
small function over :class:`~cwredis.inspector.Inspector`, which does the reading.

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
from .scripts import ScriptRefused, Scripts
from .terminal import printable
from .admin_sessions import UserError, add_parsers as add_session_parsers
from .inspector import Inspector
from . import admin_dashboard, admin_logs
from .cli import quiet_broken_pipe, version_line

EXIT_OK, EXIT_USER, EXIT_UNREACHABLE = 0, 1, 2


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
