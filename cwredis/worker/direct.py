"""Turning a child's reply into an outcome for complete.lua, and recording it from the child itself.

Normally the worker records outcomes, many per round trip. When the worker
starts a job on an idle child with nothing else waiting -- the latency case,
a client waiting on one result -- it asks the child to record the outcome
directly (``DirectRecorder``): the result goes child -> Redis -> client,
skipping a hop through the worker. The child then tells the worker
(:class:`~cwredis.worker.protocol.Recorded`); if it could not reach Redis it
sends the outcome to the worker as usual, which records it. complete.lua is fenced by the
attempt's token, so an outcome recorded twice (a lost reply) is refused the
second time, never delivered twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from .. import config
from ..connection import Pinned, connect
from ..keys import Keys
from ..scripts import Scripts
from ..script_types import Completion
from ..serialization import ErrorRecord, encode_error, frame_outcome, frame_parts
from ..signing import Signer
from .protocol import Direct, Ok, Recorded, Reply, Setup

log = logging.getLogger("cwredis.worker.direct")

#: How often a child reads the coordinator's lease timeout again (with a recording it makes anyway).
LEASE_SETTING_REFRESH_S = 1.0


def completion(token: str, generation: int, client: str, reply: Reply, signer: Signer) -> Completion:
    """A child's reply (Ok or Err) as the outcome complete.lua records, signed with its job id and attempt."""
    if isinstance(reply, Ok):
        return Completion(reply.job_id, token, client, "ok", signer.seal_outcome(
            reply.job_id, generation, token, "ok", frame_parts(reply.output, reply.result)))
    framed = frame_outcome(reply.output, encode_error(ErrorRecord(
        reply.reason, reply.error, reply.traceback, reply.exc_type, reply.exception)))
    return Completion(reply.job_id, token, client, "err",
                      signer.seal_outcome(reply.job_id, generation, token, "err", framed),
                      reply.reason, reply.error, reply.traceback, reply.output[-config.FAILED_OUTPUT_TAIL_BYTES:])


class DirectRecorder:
    """A child's own connection, to record the outcomes the worker asks it to (see the module docstring)."""

    def __init__(self, setup: Setup) -> None:
        self._url = setup.url
        self._signer = Signer(setup.secret)
        self._keys = Keys(setup.namespace)
        self._worker_id = setup.worker_id
        self._queues = setup.queues
        #: This child's own inbox, where it parks after re-parking its worker (cwredis.worker.parking).
        self.inbox = self._keys.child_inbox(setup.worker_id, setup.slot) if setup.slot >= 0 else ""
        self._redis: Pinned | None = None
        self._scripts: Scripts | None = None
        #: Until when (time.monotonic()) our worker's lease is known to hold, from the last re-parking: a
        #: hand-off read by then cannot have been requeued meanwhile (child_parking confirms one read later).
        self.lease_holds_until = 0.0
        # The coordinator's lease timeout (None: not set, or not read yet) and when it was last read: a
        # renewal can end the lease that long after it, sooner than the deadline park.lua read (the worker's
        # first renewal after the coordinator shortened the lease).
        self._lease_timeout_ms: int | None = None
        self._lease_timeout_read = -LEASE_SETTING_REFRESH_S

    def connection(self) -> Pinned:
        """The child's one connection (opened on first use): recording, and parking on its inbox."""
        if self._redis is None or self._scripts is None:
            connection = connect(self._url, "child")
            self._redis = Pinned(connection)
            self._scripts = Scripts(connection, self._keys)
        return self._redis

    def drop(self) -> None:
        """Close the connection after an error (the next call opens a new one)."""
        if self._redis is not None:
            self._redis.close()
        self._redis = self._scripts = None

    def record(self, reply: Reply, direct: Direct) -> Recorded | None:
        """Record one outcome; None if Redis was not reached (the worker then records it).

        ``accepted`` is False when the attempt had lost its job (refused). With
        ``repark``, the worker's parking gets this child's room back in the
        same round trip, and the child parks on its own inbox in that step
        (``parked``); ``room`` is the worker's room after that (0: not parked).
        """
        job_id = reply.job_id
        outcome = completion(direct.token, direct.generation, direct.client, reply, self._signer)
        repark = direct.repark
        try:
            self.connection()
            assert self._scripts is not None
            sent = time.monotonic()  # park.lua ran after this: the lease it read holds from here at least
            setting = repark and sent - self._lease_timeout_read >= LEASE_SETTING_REFRESH_S
            try:
                replies = self._send(self._scripts, outcome, repark, setting)
            except redis.exceptions.NoScriptError:  # a restarted server: execute() has just loaded them
                replies = self._send(self._scripts, outcome, repark, setting)
            if setting:
                self._lease_timeout_ms = int(replies[2]) if replies[2] is not None else None
                self._lease_timeout_read = sent
            room, lease_left_ms = (int(replies[1][0]), int(replies[1][1])) if repark else (0, 0)
            if self._lease_timeout_ms is not None:
                lease_left_ms = min(lease_left_ms, self._lease_timeout_ms)
            self.lease_holds_until = sent + lease_left_ms / 1000
            return Recorded(job_id, bool(int(replies[0][0])), room, parked=room > 0 and bool(self.inbox),
                            ended=time.monotonic())
        except Exception as exc:  # the worker records it instead
            log.debug("job %s: could not record the outcome directly (%s); the worker will", job_id, exc)
            self.drop()
            return None

    def _send(self, scripts: Scripts, outcome: Completion, repark: bool, setting: bool) -> list[Any]:
        """complete.lua, then (``repark``) park.lua, then (``setting``) the coordinator's lease timeout."""
        assert self._redis is not None
        pipe = self._redis.batch()
        outcomes, staged = scripts.stage(pipe, [outcome], config.RESULT_TTL_S * 1000)
        scripts.complete(pipe, worker_id=self._worker_id, outcomes=outcomes,
                         done_ttl_ms=config.DONE_TTL_S * 1000, result_ttl_ms=config.RESULT_TTL_S * 1000)
        if repark:
            scripts.park(pipe, worker_id=self._worker_id, queues=self._queues, child_inbox=self.inbox)
        if setting:
            pipe.execute_command("HGET", self._keys.config, "lease_ms")
        return scripts.execute(pipe)[staged:]  # after the SETs of a staged body
