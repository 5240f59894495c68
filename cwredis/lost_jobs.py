"""Jobs a server lost after their submit returned, found and submitted again.

A server restarted from older data (its last second of writes lost) may have
lost jobs whose submit returned. The client keeps each unfinished job's
sealed arguments (and, shared per function, its records: see
:class:`cwredis.delivery.Resubmission`) until the outcome arrives; after
every reconnect, and whenever the server's ``run_id`` shows it restarted
unseen, :class:`LossWatch` has the client drain its list, asks which of those
jobs the server no longer holds (pipelined EXISTS) and submits them again
under the same ids (submit.lua skips an id it holds, so this is safe to
repeat).
"""

from __future__ import annotations

import logging
from typing import Callable

import redis

from .delivery import Delivery
from .keys import Keys
from .submitter import SharedRecords, Submitter, chunked

log = logging.getLogger("cwredis.client")

#: After the server may have lost writes, this many outstanding jobs are
#: checked for existence per round trip (pipelined EXISTS).
LOSS_CHECK_BATCH = 1000


class LossWatch:
    """Whether the server may have lost writes since the client last looked, and the look itself.

    Its state is guarded by the delivery's ``cond`` (the submitting thread
    and the results thread both touch it). ``checks`` counts the looks
    begun, so a submit that was in flight during one knows to ask for another.
    """

    def __init__(self, client: redis.Redis, keys: Keys, submitter: Submitter, delivery: Delivery,
                 client_id: str) -> None:
        self._redis = client
        self._keys = keys
        self._submitter = submitter
        self._delivery = delivery
        self._client_id = client_id
        self.suspected = False
        self.checks = 0
        self._run_id: object = None  # the server's INFO run_id at the client's last drain

    def suspect(self) -> None:
        """The server may have lost writes (the connection was lost): look at the next turn."""
        with self._delivery.cond:
            self.suspected = True

    def note_run_id(self, run_id: object) -> None:
        """A server that restarted without our noticing (a proxy in between) may have lost writes too."""
        if self._run_id is not None and run_id != self._run_id:
            self.suspect()
        self._run_id = run_id

    def resubmit_lost(self, drain: Callable[[], None]) -> None:
        """Submit again every job whose submit returned but that the server no longer holds.

        ``drain`` (the client's list, delivered) runs first, so a job whose
        record is gone for another reason (a done record expires long before
        its outcome) has been delivered by then and is not run again. An
        outcome the server lost with its job is covered too: the job runs
        again and is delivered once.
        """
        drain()
        with self._delivery.cond:
            self.suspected = False
            self.checks += 1
            durable = [(job_id, kept) for job_id, kept in self._delivery.pending.items() if kept is not None]
        try:
            lost: dict[SharedRecords, list[tuple[str, bytes]]] = {}
            for chunk in chunked(durable, LOSS_CHECK_BATCH):
                pipe = self._redis.pipeline(transaction=False)
                for job_id, _ in chunk:
                    pipe.exists(self._keys.job(job_id))
                for (job_id, kept), exists in zip(chunk, pipe.execute()):
                    if not exists:
                        lost.setdefault(kept.shared, []).append((job_id, kept.args))
            for shared, jobs in lost.items():
                self._submitter.submit(shared, jobs)  # submit.lua skips ids that exist: safe to repeat
        except BaseException:
            self.suspect()
            raise
        if lost:
            log.warning("client %s: the server lost %d job(s) after their submit returned (restarted from "
                        "older data?); submitted them again", self._client_id, sum(map(len, lost.values())))
