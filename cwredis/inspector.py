"""What cw-admin and the dashboard read: the queue state, shaped as the admin JSON shows it.

:class:`Inspector` does every read (pipelined, a bounded number of round
trips whatever the number of workers or jobs); the small parsers below turn
the worker record's free-form fields into the JSON's values, reading garbage
as absent, since anyone who can write to Redis can write there.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis

from . import config, job
from .admin_sessions import UserError
from .keys import DEFAULT_KEYS, Keys


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
            if job.started_on(values[:3], worker_id):
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
_STARTED_FIELDS = [*job.STARTED, job.FUNCTION, job.PROGRESS, job.SPEC]


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
