"""What a worker owes Redis: outcomes, requeues and start markers not yet written.

Nothing here is ever dropped: a round trip takes a :class:`Batch` out, and
if Redis cannot be reached the batch goes back in front (:meth:`restore`), to
be sent again -- safe, because start.lua, complete.lua and requeue.lua are
fenced by the attempt's token, so a step that did reach the server before its
reply was lost is refused the second time.

Guarded by the supervisor's lock (``Ledger.lock``), like the pool.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..script_types import Completion, Requeue


@dataclass
class Start:
    """A job claimed ahead (uncharged) has started: charge its attempt (start.lua)."""

    id: str
    token: str


@dataclass
class Batch:
    """One round trip's worth of writes."""

    starts: list[Start] = field(default_factory=list)
    outcomes: list[Completion] = field(default_factory=list)
    requeues: list[Requeue] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.starts or self.outcomes or self.requeues)


class Ledger:
    """Writes owed to Redis, in the order they arose."""

    def __init__(self, lock: threading.Condition) -> None:
        self.lock = lock
        self._pending = Batch()
        self._sending: list[str] = []  # ids in a round trip right now
        self.first_unsent = 0.0  # when the oldest unsent outcome or start arose (monotonic)

    def _note_first(self) -> None:
        if not self._pending.outcomes and not self._pending.starts:
            self.first_unsent = time.monotonic()

    def add_outcome(self, outcome: Completion) -> None:
        with self.lock:
            self._note_first()
            self._pending.outcomes.append(outcome)
            self.lock.notify_all()

    def add_requeue(self, requeue: Requeue) -> None:
        with self.lock:
            self._pending.requeues.append(requeue)
            self.lock.notify_all()

    def add_start(self, start: Start) -> None:
        with self.lock:
            self._note_first()
            self._pending.starts.append(start)

    def forget_start(self, job_id: str) -> None:
        """The job's outcome was recorded with its charge (complete.lua): no start marker to send."""
        with self.lock:
            self._pending.starts = [s for s in self._pending.starts if s.id != job_id]

    @property
    def outcomes(self) -> int:
        return len(self._pending.outcomes)

    @property
    def starts(self) -> int:
        return len(self._pending.starts)

    @property
    def requeues(self) -> int:
        return len(self._pending.requeues)

    def take(self) -> Batch:
        """Everything owed, for one round trip (marked as being sent until :meth:`sent` or :meth:`restore`)."""
        with self.lock:
            batch, self._pending = self._pending, Batch()
            # A job that started and already finished is charged by complete.lua itself.
            finished = {c.id for c in batch.outcomes}
            batch.starts = [s for s in batch.starts if s.id not in finished]
            self._sending = [c.id for c in batch.outcomes] + [r.id for r in batch.requeues]
            return batch

    def sent(self) -> None:
        with self.lock:
            self._sending = []
            self.lock.notify_all()

    def restore(self, batch: Batch) -> None:
        """The round trip failed: everything goes back in front, in order."""
        with self.lock:
            if batch.outcomes or batch.starts:
                self._note_first()
            self._pending.starts[:0] = batch.starts
            self._pending.outcomes[:0] = batch.outcomes
            self._pending.requeues[:0] = batch.requeues
            self._sending = []

    def __bool__(self) -> bool:
        """True while anything is owed or on its way (a worker may not exit yet)."""
        return bool(self._pending.outcomes or self._pending.requeues or self._sending)

    def owned_ids(self) -> list[str]:
        """Ids this worker still answers for through the ledger (kept by a reconciliation)."""
        with self.lock:
            return (list(self._sending) + [c.id for c in self._pending.outcomes]
                    + [r.id for r in self._pending.requeues])
