"""Cancelling a client's jobs: by id, in batches, and all it still waits for when its block is left by an
exception.

Split from :mod:`cwredis.client` (submitting, waiting, the results thread):
cancellation is its own round trips (cancel.lua, batched), and it only
marks, in the client's :class:`~cwredis.delivery.Delivery`, which jobs were
cancelled here -- their ``cancelled`` outcome then comes through the
results thread like any other, once.
"""

from __future__ import annotations

import logging
import sys

import redis

from . import config
from .connection import describe
from .delivery import Delivery
from .reachability import Reconnector
from .scripts import Scripts
from .session import SessionKeys
from .submitter import chunked

log = logging.getLogger("cwredis.client")


class Cancelling:
    """One client's cancellations (see the module docstring)."""

    def __init__(self, client: redis.Redis, scripts: Scripts, reconnector: Reconnector, delivery: Delivery,
                 client_id: str, session: SessionKeys | None) -> None:
        self._redis = client
        self._scripts = scripts
        self._reconnector = reconnector
        self._delivery = delivery
        self._client_id = client_id
        self._session = session

    def many(self, job_ids: list[str], *, stop_running: bool) -> dict[str, str]:
        """Cancel jobs in one round trip per batch; per job 'cancelled', 'stopping', or the state it was
        left in (``stop_running=False`` leaves running jobs alone: 'running')."""
        words: dict[str, str] = {}
        cond = self._delivery.cond
        for batch in chunked(job_ids, config.SUBMIT_BATCH):
            with cond:
                self._delivery.cancelled_here.update(batch)
            replies = self._reconnector.call(
                lambda: self._scripts.cancel(self._redis, batch, stop_running=stop_running))
            words.update(zip(batch, replies))
        with cond:
            self._delivery.cancelled_here.difference_update(j for j, word in words.items()
                                                            if word not in ("cancelled", "stopping"))
        return words

    def outstanding(self) -> None:
        """Leaving by an exception: without a session, nothing of ours may run for nobody; with one, the
        jobs go on and we say how to collect or cancel them."""
        with self._delivery.cond:
            outstanding = list(self._delivery.pending)
        if not outstanding:
            return
        if self._session is not None:
            print(f"cwredis: {len(outstanding)} job(s) of session {self._session.name!r} keep running. "
                  f"Run the same script again to collect their results, or cancel them with: "
                  f"cw-admin cancel --session {self._session.name}", file=sys.stderr)
            return
        try:
            words = self.many(outstanding, stop_running=True)
        except Exception as exc:
            log.warning("client %s: could not cancel its %d outstanding job(s) on the way out: %s",
                        self._client_id, len(outstanding), describe(exc))
            return
        stopped = sum(1 for word in words.values() if word in ("cancelled", "stopping"))
        log.warning("client %s: left by an exception: cancelled its %d outstanding job(s)", self._client_id,
                    stopped)
