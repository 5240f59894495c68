"""What each dashboard page shows, read from Redis through :class:`~cwredis.inspector.Inspector`.

Every read here costs a bounded number of commands, pipelined into a few
round trips, whatever the number of jobs: LLEN and ZCARD for the queues and
sets, the stats counters, one record per worker, one HMGET per job held by a
worker (bounded by the workers' slots and prefetch), and pages of at most
``MAX_PAGE`` jobs for the lists. Nothing scans over jobs: queue names come
from the workers, the per-queue counters and one bounded ``SCAN`` step per
refresh (:class:`QueueNames`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .. import config, job
from ..admin import change_failed
from ..inspector import Inspector, progress_of, start_times, worker_row
from ..admin_sessions import UserError, cancel_named

#: Most jobs one page of the running or failed list shows.
MAX_PAGE = 100
#: Keys one SCAN step looks at when looking for queues nobody serves or counted yet.
SCAN_STEP = 2000
#: Lines of output shown per running job in the list (its page shows the whole tail).
OUTPUT_LINES = 5
#: Spec digests remembered with their queue (a spec never changes: its name is its content's digest).
SPEC_CACHE = 10_000


@dataclass
class QueueNames:
    """The queue names known so far: from workers, per-queue counters and a SCAN that advances one step per
    refresh (a full pass over a keyspace of N keys takes N / SCAN_STEP refreshes, never one long scan)."""

    names: set[str] = field(default_factory=lambda: {config.DEFAULT_QUEUE})
    cursor: int = 0

    def note(self, names: Any) -> None:
        self.names.update(n for n in names if n)


@dataclass
class Counts:
    """The numbers of the overview and /metrics, from one read."""

    now_ms: int
    pending: dict[str, int]
    running: dict[str, int]  # started jobs per queue ('' : spec unreadable)
    delayed: int
    failed: int
    workers: list[dict[str, Any]]
    stats: dict[str, int]
    sessions: int

    @property
    def running_total(self) -> int:
        return sum(self.running.values())

    def completed(self, outcome: str) -> dict[str, int]:
        """Per-queue totals of ``done`` or ``failed`` from the stats counters."""
        prefix = outcome + ":"
        return {k[len(prefix):]: v for k, v in self.stats.items() if k.startswith(prefix)}


class Views:
    """Reads for the pages and /metrics; thread-safe (each call pipelines on the shared connection pool)."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector
        self.redis = inspector.redis
        self.keys = inspector.keys
        self.queues = QueueNames()
        self._spec_queues: OrderedDict[str, str] = OrderedDict()

    # -- counts -------------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Queues, running, delayed, failed, workers, counters: three or four round trips."""
        keys = self.keys
        names = sorted(self.queues.names)
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(keys.workers, 0, -1, withscores=True)
        pipe.hgetall(keys.stats)
        pipe.zcard(keys.delayed)
        pipe.zcard(keys.failed)
        pipe.zcard(keys.sessions)
        pipe.scan(self.queues.cursor, match=keys.queue_pattern, count=SCAN_STEP)
        pipe.hget(keys.config, "lease_ms")
        for name in names:
            pipe.llen(keys.queue(name))
        (seconds, micros), workers, stats_raw, delayed, failed, sessions, (cursor, found), lease_ms, *lengths = \
            pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        self.queues.cursor = int(cursor)
        stats = {job.text(k) or "": job.int_or_none(v) or 0 for k, v in stats_raw.items()}
        self.queues.note(keys.queue_name(job.text(k) or "") for k in found)
        self.queues.note(k.partition(":")[2] for k in stats if ":" in k)
        deadlines = {job.text(w) or "": int(score) for w, score in workers}
        live = [w for w, deadline in deadlines.items() if deadline > now_ms]
        infos, started = self._workers_and_started(list(deadlines), live)
        lease = job.int_or_none(lease_ms) or int(config.DEFAULT_LEASE_S * 1000)
        for info in infos:  # a heartbeat pushes the deadline to its time + the lease
            info["heartbeat_ms"] = deadlines[info["id"]] - lease
        for info in infos:
            self.queues.note(info["queues"])
        running: dict[str, int] = {}
        for queue in self._queues_of([fields[3] for _, fields in started]):
            running[queue] = running.get(queue, 0) + 1
        return Counts(now_ms=now_ms, pending={n: int(length) for n, length in zip(names, lengths)},
                      running=running, delayed=int(delayed), failed=int(failed), workers=infos, stats=stats,
                      sessions=int(sessions))

    def _workers_and_started(self, all_ids: list[str], live: list[str]
                             ) -> tuple[list[dict[str, Any]], list[tuple[str, list[Any]]]]:
        """Live workers' records and the jobs started on any worker (the in-flight lists): two round trips."""
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in live:
            pipe.hgetall(self.keys.worker(worker_id))
        for worker_id in all_ids:
            pipe.lrange(self.keys.inflight(worker_id), 0, -1)
        replies = pipe.execute()
        infos = [worker_row({**{job.text(k) or "": job.text(v) or "" for k, v in fields.items()}, "id": w})
                 for w, fields in zip(live, replies[:len(live)])]
        held = [(w, job.text(j) or "") for w, ids in zip(all_ids, replies[len(live):]) for j in ids]
        for _, job_id in held:
            pipe.hmget(self.keys.job(job_id), [*job.STARTED, job.SPEC])
        started = []
        for (worker_id, job_id), values in zip(held, pipe.execute()):
            if job.started_on(values[:3], worker_id):
                started.append((worker_id, [job_id, None, None, job.text(values[3])]))
        return infos, started

    def _queues_of(self, specs: list[str | None]) -> list[str]:
        """The queue of each spec digest, from the cache or one pipelined read of those not in it."""
        missing = sorted({s for s in specs if s and s not in self._spec_queues})
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for spec in missing:
                pipe.hget(self.keys.spec(spec), job.SPEC_QUEUE)
            for spec, queue in zip(missing, pipe.execute()):
                if queue is not None:
                    self._spec_queues[spec] = job.text(queue) or ""
            while len(self._spec_queues) > SPEC_CACHE:
                self._spec_queues.popitem(last=False)
        return [self._spec_queues.get(s or "", "") for s in specs]

    # -- pages ------------------------------------------------------------------------------------

    def running_page(self, offset: int, limit: int) -> dict[str, Any]:
        """Started jobs, ordered by how long they have run (longest first), one page of them in full."""
        started = self.inspector.started()
        infos = {info["id"]: info for info in self.inspector.worker_infos()}
        now_ms = self.inspector.now_ms()
        rows = []
        for worker_id, (job_id, digest, progress, spec) in started:
            info = infos.get(worker_id, {})
            since_ms = start_times(info.get("started")).get(job_id)
            rows.append({"id": job_id, "digest": job.text(digest), "spec": job.text(spec), "worker": worker_id,
                         "host": info.get("host") or None, "pid": job.int_or_none(info.get("pid")),
                         "elapsed_s": None if since_ms is None else round(max(0, now_ms - since_ms) / 1000, 1),
                         "progress": progress_of(job.text(progress))})
        rows.sort(key=lambda r: (-(r["elapsed_s"] or 0), r["id"]))
        offset, limit = _page(offset, limit)
        page = rows[offset:offset + limit]
        specs = [r.pop("spec") for r in page]
        names = self.inspector.function_names([r.pop("digest") for r in page], specs)
        queues = self._queues_of(specs)
        pipe = self.redis.pipeline(transaction=False)
        for r in page:
            pipe.hget(self.keys.job(r["id"]), job.LIVE_OUTPUT)
        for r, name, queue, output in zip(page, names, queues, pipe.execute()):
            r.update(function=name, queue=queue or None,
                     output="\n".join((job.text(output) or "").rstrip("\n").split("\n")[-OUTPUT_LINES:]))
        return {"total": len(rows), "offset": offset, "jobs": page}

    def failed_page(self, offset: int, limit: int) -> dict[str, Any]:
        """Failed jobs, the latest first: ZCARD and one page of records."""
        offset, limit = _page(offset, limit)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.failed)
        # Counted from the end with ZRANGE (redis-py's desc=True sends ZREVRANGE, which the embedded ACL lacks).
        pipe.zrange(self.keys.failed, -(offset + limit), -(offset + 1), withscores=True)
        total, members = pipe.execute()
        members.reverse()
        ids = [job.text(m) or "" for m, _ in members]
        rows = []
        for (_, when), record in zip(members, self.inspector.records(ids)):
            if record is not None:
                rows.append({"id": record.id, "function": record.function, "attempts": record.attempts,
                             "reason": record.reason, "error": record.error, "failed_ms": int(when)})
        return {"total": int(total), "offset": offset, "jobs": rows}

    def job_detail(self, job_id: str) -> dict[str, Any]:
        """Everything ``cw-admin show`` knows about one job, and its output so far; UserError if unknown."""
        record = self.inspector.records([job_id])[0]
        if record is None:
            raise UserError(f"unknown job id {job_id!r} (never submitted, or finished and expired)")
        live = job.text(self.redis.hget(self.keys.job(job_id), job.LIVE_OUTPUT))
        failed = record.state == job.FAILED
        return {"id": record.id, "state": record.state, "function": record.function, "attempts": record.attempts,
                "reason": record.reason if failed else None, "error": record.error if failed else None,
                "worker": record.worker, "progress": progress_of(record.progress),
                "traceback": record.traceback if failed else None, "output": record.output or live or ""}

    # -- actions (the rules of cw-admin) ----------------------------------------------------------------

    def act(self, action: str, job_ids: list[str]) -> dict[str, int]:
        """``requeue``, ``purge`` or ``cancel`` the named jobs, as cw-admin does; UserError, nothing
        changed, when one is unknown (cancel) or not failed (requeue, purge)."""
        if not job_ids or not all(isinstance(j, str) and j for j in job_ids):
            raise UserError("name at least one job id; nothing changed")
        if action == "cancel":
            return {"cancelled": cancel_named(self.inspector, job_ids)}
        words = {"requeue": "requeued", "purge": "purged"}
        if action not in words:
            raise UserError(f"unknown action {action!r}")
        return {words[action]: change_failed(self.inspector, words[action], job_ids)}


def _page(offset: int, limit: int) -> tuple[int, int]:
    return max(0, offset), min(max(1, limit), MAX_PAGE)

