"""Turning a child's reply into an outcome for complete.lua, and recording it from the child itself.

Normally the worker records outcomes, many per round trip. When the worker
starts a job on an idle child with nothing else waiting -- the latency case,
a client waiting on one result -- it asks the child to record the outcome
directly (``DirectRecorder``): the result goes child -> Redis -> client,
skipping a hop through the worker. The child then tells the worker
("recorded", job_id, flag); if it could not reach Redis it sends the outcome
to the worker as usual, which records it. complete.lua is fenced by the
attempt's token, so an outcome recorded twice (a lost reply) is refused the
second time, never delivered twice.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from . import config
from .connection import Pinned, connect
from .keys import Keys
from .scripts import Completion, Scripts
from .serialization import RESULT, Signer, encode_error, frame_outcome

log = logging.getLogger("cwredis.outcomes")


def completion(job_id: str, token: str, client: str, reply: tuple[Any, ...], signer: Signer) -> Completion:
    """A child's reply ("ok", id, result, output) or ("err", id, reason, error, tb, output) as a Completion."""
    if reply[0] == "ok":
        return Completion(job_id, token, client, "ok", frame_outcome(reply[3], signer.seal(RESULT, reply[2])))
    _, _, reason, error, tb, output = reply
    return Completion(job_id, token, client, "err", frame_outcome(output, encode_error(reason, error, tb)),
                      reason, error, tb, output[-config.FAILED_OUTPUT_TAIL_BYTES:])


class DirectRecorder:
    """A child's own connection, to record the outcomes the worker asks it to (see the module docstring)."""

    def __init__(self, url: str, secret: bytes | None, namespace: str, worker_id: str,
                 queues: list[str]) -> None:
        self._url = url
        self._signer = Signer(secret)
        self._keys = Keys(namespace)
        self._worker_id = worker_id
        self._queues = queues
        self._redis: Pinned | None = None
        self._scripts: Scripts | None = None

    def record(self, job_id: str, token: str, client: str, reply: tuple[Any, ...],
               repark: bool) -> tuple[int, int] | None:
        """Record one outcome; None if Redis was not reached, else (flag, room).

        flag: 1 recorded, 0 refused (the attempt lost its job). With
        ``repark``, the worker's parking gets this child's room back in the
        same round trip; room is the worker's room after that (0: not parked).
        """
        outcome = completion(job_id, token, client, reply, self._signer)
        try:
            if self._redis is None or self._scripts is None:
                connection = connect(self._url, "child")
                self._redis = Pinned(connection)
                self._scripts = Scripts(connection, self._keys)
            try:
                replies = self._send(self._scripts, outcome, repark)
            except redis.exceptions.NoScriptError:  # a restarted server: execute() has just loaded them
                replies = self._send(self._scripts, outcome, repark)
            return int(replies[0][0]), int(replies[1]) if repark else 0
        except Exception as exc:  # the worker records it instead
            log.debug("job %s: could not record the outcome directly (%s); the worker will", job_id, exc)
            if self._redis is not None:
                self._redis.close()
            self._redis = self._scripts = None
            return None

    def _send(self, scripts: Scripts, outcome: Completion, repark: bool) -> list[Any]:
        assert self._redis is not None
        pipe = self._redis.batch()
        scripts.complete(pipe, worker_id=self._worker_id, outcomes=[outcome],
                         done_ttl_ms=config.DONE_TTL_S * 1000, result_ttl_ms=config.RESULT_TTL_S * 1000)
        if repark:
            scripts.park(pipe, worker_id=self._worker_id, queues=self._queues)
        return scripts.execute(pipe)
