"""Loads ``lua/*.lua`` once; one typed wrapper per script.

Each wrapper takes the Redis client (or a pipeline, to batch several steps in
one round trip) as ``client``; time is an argument (``now_ms``) so tests can
move the clock. Return codes become booleans, counts or exceptions here.

In a pipeline, a script is sent as a bare EVALSHA: redis-py would otherwise
precede every pipeline with a SCRIPT EXISTS round trip. Run such pipelines
with :meth:`Scripts.execute`, which reloads the scripts when the server lost
them (a restart) and re-raises, so the caller retries as after any blip.

Script texts and their flags: :mod:`cwredis.script_source`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import redis

from . import config, job
from .connection import Batch, Pinned, describe, is_transient
from .keys import Keys
from .script_source import FLAGS_PROBE, source
from .script_types import ClaimReply, Completion, Recovered, Requeue, claimed_row, parse_handed

log = logging.getLogger("cwredis")

#: An outcome body or a job's arguments this long is written with a plain SET beside its script (stage*).
STAGE_BYTES = 64 * 1024
#: How long staged arguments live until submit.lua adopts them (an orphan of a client that died before it).
STAGED_ARGS_ORPHAN_TTL_MS = 3600 * 1000

#: How many submit heads (one per function and spec in use) a Scripts keeps before it starts afresh.
_SUBMIT_HEADS_KEPT = 256


class ScriptRefused(Exception):
    """A script refused a named job (unknown id, wrong state); nothing changed."""

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(f"{job_id}: {why}")
        self.job_id = job_id
        self.why = why


def _clock(now_ms: int | None) -> str:
    """Scripts use the server's clock unless a test passes its own."""
    return "" if now_ms is None else str(int(now_ms))


class Scripts:
    """The Lua transitions, registered on one Redis client."""

    NAMES = (
        "submit", "claim", "park", "start", "heartbeat", "complete", "progress", "requeue", "requeue_expired",
        "release_inflight", "promote", "requeue_failed", "purge_failed",
        "trim_results", "cancel", "put_blobs", "unpark_children",
    )

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._client = client
        self._sources = {name: source(name) for name in self.NAMES}
        # The flagged form's SHAs until load() asks the server (what a server >= 7
        # runs): one that has not loaded them -- or cannot -- answers NOSCRIPT, and
        # load() picks the form and loads it.
        self._shas = {name: source.sha(True) for name, source in self._sources.items()}
        p = keys.prefixes()
        self._job_prefix, self._spec_prefix, self._queue_prefix = p[0], p[1], p[2]
        self._results_prefix, self._channel_prefix, self._seq_prefix = p[3], p[4], p[6]
        self._handoff = keys.handoff()
        self._outcome_prefixes = keys.outcome_prefixes()
        self._idle_prefix = self._handoff[1]
        self._children_prefix = keys.children_prefix()
        # (queue, spec, function, environment, blob TTL, session, client) -> submit.lua's keys and arguments
        # before the records and jobs (see _submit_head); a plain dict, each item one atomic step of its own.
        self._submit_heads: dict[tuple[Any, ...], tuple[list[str], list[Any]]] = {}

    def _run(self, name: str, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if isinstance(client, (redis.client.Pipeline, Batch)):
            return client.evalsha(self._shas[name], len(keys), *keys, *args)
        # EVALSHA straight away (redis-py's Script wrapper costs a submit ~10 us);
        # a server that lost its scripts (a restart) gets them loaded again.
        call = client.execute if isinstance(client, Pinned) else client.execute_command
        try:
            return call("EVALSHA", self._shas[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.load()
            return call("EVALSHA", self._shas[name], len(keys), *keys, *args)

    def load(self) -> None:
        """Load every script into the server (SCRIPT LOAD is idempotent), in the form it takes.

        The server is asked each time whether it takes script flags (see the
        module docstring): a load follows a start or a NOSCRIPT, which may
        mean a different server (a restart, a failover to another version).
        """
        flagged = self._server_takes_flags()
        for source in self._sources.values():
            self._client.script_load(source.text(flagged))
        self._shas = {name: source.sha(flagged) for name, source in self._sources.items()}

    def _server_takes_flags(self) -> bool:
        """Run a flagged no-op: Redis/Valkey >= 7 answer 1; older ones (and fakeredis) fail to compile it.

        Asking the server what it runs, rather than reading its version, also
        gets Redis-compatible servers right whatever version they report.
        """
        try:
            self._client.eval(FLAGS_PROBE, 0)
        except redis.ResponseError as exc:
            if is_transient(exc):
                raise
            log.warning("the Redis server does not take script flags (%s): at its memory limit, submits are "
                        "not refused as a whole and claims may be refused (Redis/Valkey >= 7 needed)",
                        describe(exc))
            return False
        return True

    def execute(self, pipe: Any) -> list[Any]:
        """Execute a pipeline holding scripts; on NOSCRIPT, reload them and re-raise (a transient error)."""
        try:
            return list(pipe.execute())
        except redis.exceptions.NoScriptError:
            self.load()
            raise

    # -- client side ---------------------------------------------------------

    def submit(
        self,
        client: Any,
        *,
        queue: str,
        spec_digest: str,
        spec_fields: dict[str, str] | None,
        fn_digest: str,
        fn_blob: bytes | None,
        fn_name: str,
        env_digest: str,
        env_blob: bytes | None,
        jobs: Sequence[tuple[str, bytes]],
        blob_ttl_ms: int,
        session: str = "",
        attach: str = "",
    ) -> Any:
        """Queue ``jobs`` (id, args blob); -1 means: call again with the spec and blobs.

        In a ``session`` (``attach``: the submitting client's id), the reply is
        ``[queued, [[job_id, state, generation, outcome], ...]]`` for the jobs the
        session already held (see submit.lua).
        """
        head = (queue, spec_digest, fn_digest, env_digest, blob_ttl_ms, session, attach)
        made = self._submit_heads.get(head)
        if made is None:
            made = self._submit_heads[head] = self._submit_head(*head)
        keys = made[0] + [self.keys.job(job_id) for job_id, _ in jobs]
        args = made[1].copy()
        if spec_fields is not None and fn_blob is not None and env_blob is not None:
            args += ["1", fn_blob, fn_name, env_blob, len(spec_fields)]
            args += [item for pair in spec_fields.items() for item in pair]
        else:
            args.append("0")
        for job_id, blob in jobs:
            args += [job_id, blob]
        return self._run("submit", client, keys, args)

    def _submit_head(self, queue: str, spec_digest: str, fn_digest: str, env_digest: str, blob_ttl_ms: int,
                     session: str, attach: str) -> tuple[list[str], list[Any]]:
        """submit.lua's keys and arguments before the records and jobs: the same for every submit of one
        function in one spec, so :meth:`submit` makes them once (a fresh list each call cost a lone job ~10 us)."""
        if len(self._submit_heads) >= _SUBMIT_HEADS_KEPT:
            self._submit_heads.clear()
        keys = [self.keys.queue(queue), self.keys.spec(spec_digest), self.keys.blob(fn_digest),
                self.keys.blob(env_digest), self.keys.session_jobs(session), self.keys.sessions]
        args: list[Any] = [spec_digest, fn_digest, blob_ttl_ms, queue, *self._handoff, self._children_prefix,
                           attach if session else "", session]
        return keys, args

    def stage_args(self, pipe: Any, jobs: Sequence[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int]:
        """Queue a plain SET of each job's large arguments on ``pipe``, ahead of :meth:`submit`; the jobs to
        pass it (staged ones carry ``job.STAGED_ARGS``), and how many replies the SETs add.

        Through submit.lua and claim.lua a MiB of arguments costs ~4 ms of
        server time, a plain SET and GET ~0.9 ms (measured); the job process
        reads them (cwredis.worker.staged). ``NX`` with a short TTL: a key
        left by a client that died before submit.lua ran (which gives a job
        the function's lifetime) expires soon, and a resent submit (same id,
        same arguments) never shortens a queued job's.
        """
        staged = []
        sets = 0
        for job_id, envelope in jobs:
            if len(envelope) >= STAGE_BYTES:
                pipe.execute_command("SET", self.keys.staged_args(job_id), envelope, "PX",
                                     STAGED_ARGS_ORPHAN_TTL_MS, "NX")
                envelope, sets = job.STAGED_ARGS, sets + 1
            staged.append((job_id, envelope))
        return staged, sets

    def put_blobs(self, client: Any, *, blobs: Sequence[tuple[str, bytes | None]], ttl_ms: int) -> list[int]:
        """Store argument blobs (digest, data; None: believed stored, renew it); the 0-based indexes
        of those sent without data that are missing (send them again with it)."""
        reply = self._run("put_blobs", client, [self.keys.blob(digest) for digest, _ in blobs],
                          [ttl_ms, *(data or b"" for _, data in blobs)])
        return [int(i) - 1 for i in reply]

    def trim_results(self, client: Any, *, client_id: str, headers: Sequence[bytes], drop_if_empty: bool) -> int:
        """Remove the head of a client's outcome list as far as its entries start with ``headers``; how many.

        With ``drop_if_empty``, a list left empty is deleted with its sequence counter.
        """
        return int(self._run("trim_results", client,
                             [self.keys.results(client_id), self.keys.result_seq(client_id)],
                             ["1" if drop_if_empty else "0", *headers]))

    # -- worker side ---------------------------------------------------------

    def claim(
        self, client: Any, *, worker_id: str, queues: Sequence[str], lease_ms: int,
        max_count: int, start_count: int | None = None, park: bool = False, now_ms: int | None = None,
    ) -> Any:
        """Claim up to ``max_count`` jobs, oldest first (renewing the lease); jobs handed to us come first.

        The first ``start_count`` (default: all) are charged an attempt now;
        the rest are claimed ahead and charged by :meth:`start` when they start.
        With ``park``, a claim short of ``start_count`` that found the queues
        empty parks the worker: submit hands it new jobs through its inbox.
        Parse the reply with :meth:`parse_claim`.
        """
        return self._run(
            "claim", client,
            [self.keys.workers, self.keys.inflight(worker_id), self.keys.inbox(worker_id),
             self.keys.parked(worker_id), *(self.keys.queue(q) for q in queues)],
            [worker_id, lease_ms, max_count, self._job_prefix, _clock(now_ms),
             max_count if start_count is None else start_count, "1" if park else "0", self._idle_prefix,
             self._spec_prefix, *queues],
        )

    def park(self, client: Any, *, worker_id: str, queues: Sequence[str], child_inbox: str = "",
             now_ms: int | None = None) -> Any:
        """Give a parked worker one more job's room (a child of it recorded its own outcome); [its room now,
        how long its lease still runs (ms)].

        With ``child_inbox``, the child also parks on that inbox of its own (cwredis.worker.parking)."""
        return self._run("park", client, [self.keys.parked(worker_id), self.keys.parked_children(worker_id),
                                          self.keys.workers, *(self.keys.queue(q) for q in queues)],
                         [worker_id, self._idle_prefix, _clock(now_ms), child_inbox, *queues])

    def unpark_children(self, client: Any, *, worker_id: str, inboxes: Sequence[str], ttl_ms: int) -> Any:
        """End the parking of these job processes of ``worker_id`` (their inboxes); how many were listed."""
        return self._run("unpark_children", client, [self.keys.parked_children(worker_id)], [ttl_ms, *inboxes])

    def start(self, client: Any, *, jobs: Sequence[tuple[str, str]]) -> Any:
        """Charge jobs claimed ahead (id, token) the attempt they just started; returns how many."""
        return self._run("start", client, [self.keys.job(job_id) for job_id, _ in jobs],
                         [token for _, token in jobs])

    def heartbeat(self, client: Any, *, worker_id: str, lease_ms: int, info: dict[str, str],
                  now_ms: int | None = None) -> Any:
        """Renew the lease and write what changed in ``info``; the reply is 1 if the lease was still valid,
        0 if it had expired."""
        fields = [item for pair in info.items() for item in pair]
        return self._run("heartbeat", client, [self.keys.workers, self.keys.worker(worker_id)],
                         [worker_id, lease_ms, config.WORKER_INFO_TTL_LEASES * lease_ms, _clock(now_ms), *fields])

    @staticmethod
    def parse_claim(reply: Any) -> ClaimReply:
        """claim.lua's reply; jobs handed to us (from the inbox) come first: they are the oldest."""
        rows, dropped, handed, room = reply
        inbox = parse_handed(handed)  # a 'wake' read here is answered by this very claim
        claimed = inbox.claimed
        count = len(claimed)
        claimed += [claimed_row(rows[i:i + 7]) for i in range(0, len(rows), 7)]
        return ClaimReply(claimed, [job.text(d) or "" for d in dropped], count, inbox.garbled, int(room),
                          inbox.cancels)

    def complete(self, client: Any, *, worker_id: str, outcomes: Sequence[Completion], done_ttl_ms: int,
                 result_ttl_ms: int, publish_max_bytes: int = 8192, now_ms: int | None = None) -> Any:
        """Record outcomes; the reply is one flag per outcome (1 recorded, 0 refused: lease lost).

        An outcome whose ``client`` is '' (its spec was unreadable) is recorded but delivered to no one.
        """
        keys = [self.keys.inflight(worker_id), self.keys.failed, self.keys.stats]
        args: list[Any] = [_clock(now_ms), done_ttl_ms, result_ttl_ms, publish_max_bytes, *self._outcome_prefixes,
                           self._spec_prefix, worker_id]
        for c in outcomes:
            keys.append(self.keys.job(c.id))
            args += [c.id, c.token, c.kind, c.body, c.reason, c.error, c.traceback, c.client, c.output, c.staged]
        return self._run("complete", client, keys, args)

    def stage(self, pipe: Any, outcomes: Sequence[Completion], result_ttl_ms: int) -> tuple[list[Completion], int]:
        """Queue a plain SET of each large body on ``pipe``, ahead of :meth:`complete`; the outcomes to pass it,
        and how many replies the SETs add before its own.

        A body of ``STAGE_BYTES`` or more passed to complete.lua is copied
        into Lua, into the results entry (header and body joined) and into the
        list: about 3 ms of server time per MiB, against 0.05 ms for a plain
        write (measured). Staged, it is written once, outside the script, and
        complete.lua appends an entry naming its key (kind ``ref``), which the
        client reads with the list (:class:`~cwredis.outcome_list.OutcomeList`)
        and deletes as it trims. A body the script refuses is deleted by it;
        one orphaned by a lost reply expires with the results
        (``result_ttl_ms``); each resend writes it again under the same key.
        """
        staged = []
        for c in outcomes:
            if len(c.body) >= STAGE_BYTES:
                key = self.keys.staged_body(c.id, c.token)
                pipe.execute_command("SET", key, c.body, "PX", result_ttl_ms)
                c = dataclasses.replace(c, body=b"", staged=key)
            staged.append(c)
        return staged, sum(1 for c in staged if c.staged)

    def progress(self, client: Any, *, job_id: str, token: str, client_id: str, fraction: float | None,
                 message: str | None, output: str | None = None) -> Any:
        """Store and publish a running job's progress (None: no new report) and store its output tail (None:
        unchanged); 0 if the attempt no longer owns the job."""
        text = "" if fraction is None else f"{fraction:.4f} {message or ''}".rstrip()
        published = "" if fraction is None else f"P\n{job_id}\n{fraction:.4f}\n{message or ''}"
        return self._run("progress", client, [self.keys.job(job_id)],
                         [token, text, self.keys.channel(client_id), published, output or ""])

    def requeue(self, client: Any, *, worker_id: str, jobs: Sequence[Requeue], now_ms: int | None = None,
                result_ttl_ms: int = 0) -> Any:
        """Give back owned jobs (retry after a timeout, release on a hard stop, or reject); flags per job
        (1 requeued, 2 failed after its last rejection, 0 refused)."""
        keys = [self.keys.inflight(worker_id), self.keys.delayed, self.keys.failed, self.keys.stats]
        args: list[Any] = [_clock(now_ms), *self._handoff, result_ttl_ms or config.RESULT_TTL_S * 1000,
                           config.DONE_TTL_S * 1000, *self._outcome_prefixes, worker_id]
        for r in jobs:
            keys += [self.keys.job(r.id), self.keys.queue(r.queue)]
            args += [r.id, r.token, r.mode, r.delay_ms, r.queue, r.limit or "", r.client, r.body, r.error]
        return self._run("requeue", client, keys, args)

    def release_inflight(self, client: Any, *, worker_id: str, queues: Sequence[str], keep: Sequence[str],
                         unregister: bool) -> int:
        """Give back in-flight ids this worker is not running (all but ``keep``), and unpark it."""
        return int(self._run(
            "release_inflight", client,
            [self.keys.inflight(worker_id), self.keys.workers, self.keys.worker(worker_id),
             self.keys.inbox(worker_id)],
            [worker_id, "1" if unregister else "0", self._job_prefix, self._spec_prefix,
             self._queue_prefix, *self._handoff, ",".join(queues), *keep],
        ))

    def cancel(self, client: Any, job_ids: Sequence[str], *, stop_running: bool) -> list[str]:
        """Cancel jobs (see cancel.lua); per job 'cancelled', 'stopping', or the state it was left in."""
        if not job_ids:
            return []
        reply = self._run("cancel", client, [self.keys.delayed],
                          [config.DONE_TTL_S * 1000, config.RESULT_TTL_S * 1000, self._job_prefix,
                           self._spec_prefix, self.keys.inbox(""), *self._outcome_prefixes,
                           "1" if stop_running else "0", self._queue_prefix, *job_ids])
        return [job.text(word) or "unknown" for word in reply]

    # -- coordinator side ----------------------------------------------------

    def requeue_expired(self, client: Any, *, worker_id: str, forget_after_ms: int, result_ttl_ms: int,
                        lost_body: bytes, lost_error: str, lost_traceback: str, now_ms: int | None = None,
                        ) -> Recovered:
        """Recover one expired worker's jobs."""
        requeued, lost, dropped = self._run(
            "requeue_expired", client,
            [self.keys.workers, self.keys.inflight(worker_id), self.keys.worker(worker_id),
             self.keys.failed, self.keys.stats, self.keys.inbox(worker_id), self.keys.parked_children(worker_id)],
            [worker_id, _clock(now_ms), forget_after_ms, result_ttl_ms, lost_body, lost_error, lost_traceback,
             self._job_prefix, self._spec_prefix, self._queue_prefix, self._results_prefix,
             self._channel_prefix, self._seq_prefix, *self._handoff, config.DONE_TTL_S * 1000,
             self.keys.child_inbox_prefix(worker_id)],
        )
        return Recovered(int(requeued), int(lost), int(dropped))

    def promote(self, client: Any, *, limit: int = 1000, now_ms: int | None = None) -> int:
        """Move due delayed jobs back to their queues; returns how many."""
        return int(self._run("promote", client, [self.keys.delayed],
                             [_clock(now_ms), limit, self._job_prefix, self._spec_prefix, self._queue_prefix,
                              *self._handoff]))

    # -- admin side ----------------------------------------------------------

    def requeue_failed(self, client: Any, job_ids: Sequence[str] = ()) -> int:
        """Requeue the named (or all) failed jobs; ScriptRefused names a bad id, nothing changed."""
        reply = self._run("requeue_failed", client, [self.keys.failed],
                          [self._job_prefix, self._spec_prefix, self._queue_prefix, *self._handoff, *job_ids])
        return self._count_or_refuse(reply)

    def purge_failed(self, client: Any, job_ids: Sequence[str] = ()) -> int:
        """Delete the named (or all) failed jobs; ScriptRefused names a bad id, nothing changed."""
        reply = self._run("purge_failed", client, [self.keys.failed], [self._job_prefix, *job_ids])
        return self._count_or_refuse(reply)

    @staticmethod
    def _count_or_refuse(reply: Any) -> int:
        if int(reply[0]) < 0:
            raise ScriptRefused(job.text(reply[1]) or "", job.text(reply[2]) or "")
        return int(reply[0])
