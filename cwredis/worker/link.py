"""Every Redis call a worker makes, with replies parsed into named types.

This is the one place where the worker meets redis-py: each method sends one
round trip (a pipeline of scripts where several steps travel together) and
returns a typed reply. Any error from Redis -- a dropped connection, a
server at its memory limit, a refused script -- leaves here as
:class:`LinkDown`, classified (``transient`` or not) by
:func:`cwredis.connection.is_transient`, never by message text. The worker
never exits because of one: it backs off (:meth:`Link.failed`) and tries
again, while its loop goes on serving children, timeouts and signals.

Connections, each its own so no call waits behind another's blocking one:

* ``_redis``: the pool the supervisor's loop, the intake and the lease share
  (pipelines check out a connection each);
* ``_inbox``: the intake's blocking read of the worker's inbox (on the
  latency path, so a :class:`~cwredis.connection.Pinned` connection).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from .. import config, job, sentinel
from ..catalog import Catalog
from ..connection import Pinned, connect, describe, is_transient
from ..reachability import Reconnector, check_connection_budget
from ..keys import Keys
from ..scripts import Scripts
from ..script_types import ClaimReply, Claimed, parse_handed
from ..signing import Signer
from .ledger import Batch

log = logging.getLogger("cwredis.worker")
T = TypeVar("T")

class LinkDown(Exception):
    """A round trip failed; ``transient`` says whether Redis is away or busy (retry) or refused it."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause
        self.transient = is_transient(cause)


@dataclass
class Handed:
    """One read of the inbox: jobs submit.lua handed us, whether a wake came, how many messages were garbage,
    which running jobs to cancel."""

    claimed: list[Claimed]
    wake: bool
    garbled: int
    cancels: list[str]


@dataclass
class Recording:
    """The replies of one recording round trip."""

    outcomes: list[bool]  # per outcome: recorded, or refused (the attempt lost its job)
    claim: ClaimReply | None  # what the claim in the same round trip took, if one was sent


@dataclass
class Renewal:
    """A lease renewal's reply: whether the lease was still valid, and the coordinator's lease setting."""

    was_valid: bool
    lease_ms: int | None


class Link:
    """The worker's Redis calls; see the module docstring."""

    def __init__(self, url: str, keys: Keys, signer: Signer, worker_id: str, queues: Sequence[str]) -> None:
        self.keys = keys
        self.worker_id = worker_id
        self.queues = list(queues)
        self._redis = connect(url, "worker")
        # redis-py's own attribute for new connections of this pool (see WORKER_CALL_TIMEOUT_S).
        self._redis.connection_pool.connection_kwargs["socket_timeout"] = config.WORKER_CALL_TIMEOUT_S
        self._scripts = Scripts(self._redis, keys)
        self._inbox = Pinned(self._redis)
        self.catalog = Catalog(self._redis, keys, signer)
        self._reconnector = Reconnector(url, "worker")
        #: Outcomes wait for a replica (WAIT 1) before they count as recorded: a Sentinel URL.
        self.replica_ack = sentinel.needs_replica_ack(self._redis)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            if isinstance(exc, LinkDown):
                raise
            raise LinkDown(exc) from exc

    # -- outages -------------------------------------------------------------------

    def failed(self, down: LinkDown) -> float:
        """Log a failed round trip (an outage once, then quietly); the back-off to wait before the next."""
        if not down.transient:
            log.error("worker %s: Redis refused a call: %s; retrying", self.worker_id, down)
        return self._reconnector.failed(down.cause, sleep=False)

    def succeeded(self) -> bool:
        """Note a working round trip; True if it ends an outage (the caller then reconciles)."""
        return self._reconnector.succeeded()

    # -- start-up and lease -------------------------------------------------------------

    def load_scripts(self) -> None:
        """Load the scripts (and, once there, warn if the server is near its connection limit)."""
        self._call(self._scripts.load)
        check_connection_budget(self._redis, f"worker {self.worker_id}")

    def renew(self, lease_ms: int, info: dict[str, str]) -> Renewal:
        """Renew our lease, publish our description, and read the coordinator's lease setting."""
        def round_trip() -> Renewal:
            pipe = self._redis.pipeline(transaction=False)
            self._scripts.heartbeat(pipe, worker_id=self.worker_id, lease_ms=lease_ms, info=info)
            pipe.hget(self.keys.config, "lease_ms")
            was_valid, lease = self._scripts.execute(pipe)
            try:
                setting = int(lease) if lease else None
            except ValueError:
                setting = None
            return Renewal(bool(int(was_valid)), setting if setting and setting > 0 else None)
        return self._call(round_trip)

    # -- claiming -------------------------------------------------------------------------

    def claim(self, lease_ms: int, max_count: int, start_count: int) -> ClaimReply:
        """Claim up to ``max_count`` jobs (renews the lease), parking us if the queues are empty."""
        return self._call(lambda: self._scripts.parse_claim(self._scripts.claim(
            self._redis, worker_id=self.worker_id, queues=self.queues, lease_ms=lease_ms, max_count=max_count,
            start_count=start_count, park=True)))

    def read_inbox(self, block_s: float, count: int) -> Handed | None:
        """Block up to ``block_s`` for hand-offs and wakes in our inbox; None if nothing came."""
        def round_trip() -> Handed | None:
            got: Any = self._inbox.execute("BLMPOP", block_s, 1, self.keys.inbox(self.worker_id), "LEFT",
                                           "COUNT", max(1, count))
            if got is None:
                return None
            inbox = parse_handed(got[1])
            return Handed(inbox.claimed, inbox.wake, inbox.garbled, inbox.cancels)
        return self._call(round_trip)

    def still_parked(self) -> bool:
        """Are we still parked, listed idle on every queue, and every queue empty? (Reads only.)

        What a parked worker asks when its blocking read times out: if so,
        there is nothing to do and nothing to write; if not (a job queued
        without a wake, a server restarted from older data, our idle entry
        dropped because our lease lapsed), it claims, which parks it afresh.
        """
        def round_trip() -> bool:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self.keys.parked(self.worker_id))
            for queue in self.queues:
                pipe.zscore(self.keys.idle(queue), self.worker_id)
                pipe.llen(self.keys.queue(queue))
            room, *per_queue = pipe.execute()
            listed, lengths = per_queue[0::2], per_queue[1::2]
            try:
                parked = int(room or 0) > 0
            except ValueError:  # garbage where our parking should be: claim, which resets it
                parked = False
            return parked and all(s is not None for s in listed) and not any(lengths)
        return self._call(round_trip)

    def poll_inbox(self) -> Handed | None:
        """What our inbox holds now (no wait): cancellations while we are busy; None if empty."""
        def round_trip() -> Handed | None:
            got: Any = self._inbox.execute("LMPOP", 1, self.keys.inbox(self.worker_id), "LEFT", "COUNT", 100)
            if got is None:
                return None
            inbox = parse_handed(got[1])
            return Handed(inbox.claimed, inbox.wake, inbox.garbled, inbox.cancels)
        return self._call(round_trip)

    def confirm(self, lease_ms: int, claimed: Sequence[Claimed]) -> list[Claimed]:
        """Renew our lease, then keep the jobs still ours (this attempt's token, running for us).

        For hand-offs read when our lease may have run out (were we frozen?):
        once the lease is renewed the coordinator leaves our jobs alone, so
        what this reads stays true.
        """
        def round_trip() -> list[Claimed]:
            pipe = self._redis.pipeline(transaction=False)
            self._scripts.heartbeat(pipe, worker_id=self.worker_id, lease_ms=lease_ms, info={})
            for c in claimed:
                pipe.hmget(self.keys.job(c.id), job.FENCE)
            replies = self._scripts.execute(pipe)[1:]
            return [c for c, fence in zip(claimed, replies) if job.held_by(fence, c.token, self.worker_id)]
        return self._call(round_trip)

    def load_records(self, claimed: Sequence[Claimed]) -> None:
        """Fetch the specs, functions and environments of claimed jobs that are not cached yet."""
        def round_trip() -> None:
            self.catalog.fetch([c.spec for c in claimed], [c.function for c in claimed])
            self.catalog.fetch([], self.catalog.env_digests(c.spec for c in claimed))
        self._call(round_trip)

    def load_arg_blobs(self, digests: Sequence[str]) -> list[bytes | None]:
        """The argument blobs ``digests`` name (None: missing), in one round trip."""
        def round_trip() -> list[bytes | None]:
            pipe = self._redis.pipeline(transaction=False)
            for digest in digests:
                pipe.hget(self.keys.blob(digest), job.BLOB_DATA)
            return pipe.execute()
        return self._call(round_trip)

    def load_staged_args(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """The staged arguments of jobs ``job_ids`` (``job.STAGED_ARGS``; None: missing), in one round trip."""
        def round_trip() -> list[bytes | None]:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.get(self.keys.staged_args(job_id))
            return pipe.execute()
        return self._call(round_trip)

    # -- recording --------------------------------------------------------------------------

    def record(self, batch: Batch, *, lease_ms: int, claim_count: int, start_count: int) -> Recording:
        """One round trip: starts, outcomes, requeues, and (if ``claim_count``) a claim."""
        def round_trip() -> Recording:
            pipe = self._redis.pipeline(transaction=False)
            if batch.starts:  # first: a job that started and already finished is charged before it completes
                self._scripts.start(pipe, jobs=[(s.id, s.token) for s in batch.starts])
            staged = 0
            if batch.outcomes:
                to_record, staged = self._scripts.stage(pipe, batch.outcomes, config.RESULT_TTL_S * 1000)
                self._scripts.complete(pipe, worker_id=self.worker_id, outcomes=to_record,
                                       done_ttl_ms=config.DONE_TTL_S * 1000,
                                       result_ttl_ms=config.RESULT_TTL_S * 1000)
            if batch.requeues:
                self._scripts.requeue(pipe, worker_id=self.worker_id, jobs=batch.requeues)
            if claim_count:
                self._scripts.claim(pipe, worker_id=self.worker_id, queues=self.queues, lease_ms=lease_ms,
                                    max_count=claim_count, start_count=start_count, park=True)
            acknowledging = self.replica_ack and bool(batch.outcomes or batch.requeues)
            if acknowledging:  # last, on the pipeline's one connection: it covers everything above
                pipe.execute_command(*sentinel.WAIT_COMMAND)
            replies = iter(self._scripts.execute(pipe))
            if acknowledging:
                # Not confirmed: LinkDown, so the recorder keeps the outcomes owed and undoes the claim
                # (the same path as a lost reply); complete and requeue are fenced, so resending is safe.
                *replies_before, replicas = replies
                sentinel.check_acknowledged(replicas, f"{len(batch.outcomes)} outcome(s) and "
                                                      f"{len(batch.requeues)} requeue(s)")
                replies = iter(replies_before)
            if batch.starts:
                next(replies)
            for _ in range(staged):  # the SETs of staged bodies
                next(replies)
            outcomes = [bool(int(f)) for f in next(replies)] if batch.outcomes else []
            if batch.requeues:
                next(replies)  # a refused requeue: the job is another attempt's now, nothing to do
            claim = self._scripts.parse_claim(next(replies)) if claim_count else None
            return Recording(outcomes, claim)
        return self._call(round_trip)

    def send_progress(self, reports: Sequence[tuple[str, str, str, float | None, str | None, str | None]]) -> None:
        """Store and publish running jobs' progress, and store their output tails: (job id, token, client,
        fraction, message, output) each; a None fraction or output leaves that part as it is."""
        def round_trip() -> None:
            pipe = self._redis.pipeline(transaction=False)
            for job_id, token, client, fraction, message, output in reports:
                self._scripts.progress(pipe, job_id=job_id, token=token, client_id=client, fraction=fraction,
                                       message=message, output=output)
            self._scripts.execute(pipe)
        self._call(round_trip)

    def unpark_children(self, indices: Sequence[int], ttl_ms: int) -> int:
        """Call these parked job processes back from their inboxes (cwredis.worker.parking); how many were
        still listed."""
        inboxes = [self.keys.child_inbox(self.worker_id, i) for i in indices]
        return self._call(lambda: int(self._scripts.unpark_children(self._redis, worker_id=self.worker_id,
                                                                    inboxes=inboxes, ttl_ms=ttl_ms)))

    # -- reconciliation -------------------------------------------------------------------------

    def inflight_ids(self) -> set[str]:
        """What our in-flight list holds (a read: the cheap check before a reconciliation)."""
        return self._call(lambda: {job.text(i) or "" for i in self._redis.lrange(
            self.keys.inflight(self.worker_id), 0, -1)})  # type: ignore[union-attr]

    def release(self, keep: Sequence[str], *, unregister: bool) -> int:
        """Give back every in-flight job but ``keep`` (unparks us); with ``unregister``, leave for good."""
        return self._call(lambda: self._scripts.release_inflight(
            self._redis, worker_id=self.worker_id, queues=self.queues, keep=keep, unregister=unregister))

    def close(self) -> None:
        self._inbox.close()
        self._redis.close()
