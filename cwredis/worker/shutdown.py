"""How a worker stops: hand back what has not started, let what runs finish, settle with Redis.

A first signal stops taking jobs: jobs claimed but not started go back to
their queues, attempt refunded, parked job processes are called back, and
the worker stops serving once nothing runs and nothing is owed (or, while
Redis is away, after ``WORKER_FINISH_S``). A second signal kills the
children and gives their jobs back unrun. Then :meth:`Shutdown.finish`
records what is owed, hands back the rest and unregisters. Separate from the
loop because stopping has an order of its own, the same whichever phase the
signal came in.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import config
from .attempts import Attempts
from .intake import Intake
from .ledger import Ledger
from .link import Link, LinkDown
from .parking import Parking
from .pool import Pool
from .recording import Recorder

log = logging.getLogger("cwredis.worker")


class Shutdown:
    """Stops one worker in order; see the module docstring."""

    def __init__(self, link: Link, pool: Pool, lock: threading.Condition, ledger: Ledger, attempts: Attempts,
                 parking: Parking, intake: Intake, recorder: Recorder, worker_id: str) -> None:
        self._link = link
        self._pool = pool
        self._lock = lock
        self._ledger = ledger
        self._attempts = attempts
        self._parking = parking
        self._intake = intake
        self._recorder = recorder
        self._worker_id = worker_id
        self._asked_at: float | None = None  # when the first stop request was seen (monotonic)

    def stopped_serving(self) -> bool:
        """Stopping: hand back what has not started; True once nothing runs and nothing is owed."""
        now = time.monotonic()
        if self._asked_at is None:
            self._asked_at = now
        if self._intake.room:  # no more hand-offs; those not read yet go back
            self._intake.room = 0
            self._intake.needs_reconcile = True
        with self._lock:
            self._give_back_ready()
            if self._parking.count():
                self._parking.want_all()  # parked children come back first (parking)
                return False
            if any(s.sent for s in self._pool.slots):
                return False
            if not self._ledger and not self._intake.needs_reconcile:
                return True
        # Redis away: after WORKER_FINISH_S, leave what we owe to the coordinator (see config).
        return self._recorder.retry_at > now and now - self._asked_at > config.WORKER_FINISH_S

    def _give_back_ready(self) -> None:
        """Stopping: claimed jobs that did not start go back unrun, attempt refunded (lock held)."""
        ready = self._pool.ready
        while ready:
            running = ready.pop()
            self._attempts.give_back(running)

    def stop_running_jobs(self) -> None:
        """Second signal: kill the children now and give their jobs back without using an attempt."""
        with self._lock:
            self._give_back_ready()
        stopped = self._pool.take_all_sent()
        for running in stopped:
            self._attempts.give_back(running)
        if stopped:
            log.warning("worker %s: stopped %d running job(s); they go back to their queues", self._worker_id,
                        len(stopped))

    def finish(self) -> None:
        """Stop the children; record what is owed, hand back the rest, unregister (for WORKER_FINISH_S at most)."""
        self._pool.shutdown()  # a parked child exits too: it watches its pipe
        self._parking.unlist_all()
        deadline = time.monotonic() + config.WORKER_FINISH_S
        while time.monotonic() < deadline:
            if (self._ledger or self._intake.needs_reconcile) and not self._recorder.record(claim=False):
                time.sleep(0.2)
                continue
            try:
                with self._intake.claim_lock:
                    self._link.release([], unregister=True)
                break
            except LinkDown as down:
                self._link.failed(down)
                time.sleep(0.2)
        else:
            log.warning("worker %s: cannot reach Redis to hand back its jobs; the coordinator will recover "
                        "them when our lease expires", self._worker_id)
        self._link.close()
        self._parking.close()
