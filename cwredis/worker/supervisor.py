"""The worker's supervisor: wiring, signals, and the main loop as named phases.

One supervisor process runs up to ``--concurrency`` jobs at once, each in a
long-lived child process. Its parts, each a module of this package:

* :mod:`~cwredis.worker.pool` -- the children, the ``ready`` FIFO of claimed
  jobs, timeouts and deaths (pidfd), as typed events;
* :mod:`~cwredis.worker.slot` -- one child: its process, pipes and pidfd, and the jobs written to it;
* :mod:`~cwredis.worker.intake` -- the fetcher thread: claims, parking and
  the inbox of hand-offs, reconciliation;
* :mod:`~cwredis.worker.admission` -- whether a job taken may run: verified, failed as corrupt, or
  rejected (and the quarantine of a worker with the wrong secret);
* :mod:`~cwredis.worker.lease` -- the thread renewing our one lease;
* :mod:`~cwredis.worker.collector` -- waiting on the children, and what each thing they said means;
* :mod:`~cwredis.worker.shutdown` -- stopping in order: give back, let run, settle with Redis;
* :mod:`~cwredis.worker.ledger` -- outcomes, requeues and start markers owed to Redis;
* :mod:`~cwredis.worker.recording` -- the round trip that writes them and claims, and reconciliation;
* :mod:`~cwredis.worker.attempts` -- what follows an attempt's end: record, retry, fail, give back;
* :mod:`~cwredis.worker.cutoffs` -- timeouts and cancellations;
* :mod:`~cwredis.worker.parking` -- job processes parked on inboxes of their own;
* :mod:`~cwredis.worker.link` -- every Redis call, with typed replies;
* :mod:`~cwredis.worker.pacing` -- prefetch, write-ahead, shedding, just-in-time
  claims and record batching, as pure functions;
* :mod:`~cwredis.worker.stop` -- the one stop request every wait watches;
* :mod:`~cwredis.worker.protocol` -- what the supervisor and children say.

The main loop (:meth:`Worker.step`) reads as its phases: stop if asked,
wait for a child or a deadline, collect what children said, enforce
timeouts, ask back jobs stuck behind a long one, dispatch ready jobs, record
(outcomes, requeues and the next claim in one round trip), pass on progress.
It never waits for Redis beyond one bounded round trip: while Redis is away
it backs off by the clock, and goes on serving children, timeouts and signals.

A job's path: queue --claim.lua--> our in-flight list and ``ready`` (or,
while we are parked, submit.lua --> our in-flight list and inbox --BLMPOP-->
``ready``) --> a child --complete.lua (sent by us, or by the child)--> done
or failed. Each step is one atomic script; an id is always in a queue or our
in-flight list, where the coordinator finds it if we die.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Sequence

from .. import config
from ..keys import DEFAULT_KEYS, Keys
from ..signing import Signer
from . import pacing
from .attempts import Attempts
from .collector import Collector
from .cutoffs import Cutoffs
from .intake import Intake
from .lease import Lease
from .ledger import Ledger, Start
from .link import Link, LinkDown
from .recording import Recorder
from .parking import ANSWER_WITHIN_S, Parking
from .pool import Pool
from .shutdown import Shutdown
from .slot import Running, Slot
from .protocol import Err, Setup
from .stop import Step, StopRequest

log = logging.getLogger("cwredis.worker")


class Worker:
    """Claims jobs from ``queues`` and runs up to ``concurrency`` at once."""

    def __init__(self, url: str, *, queues: Sequence[str] = (config.DEFAULT_QUEUE,), concurrency: int = 1,
                 burst: bool = False, secret: bytes | None = None, secret_source: str = "",
                 keys: Keys = DEFAULT_KEYS, slot: type[Slot] = Slot) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.url = url
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.jobs_done = 0
        self.since = int(time.time())  # when it started (cw-admin workers)
        self._keys = keys
        self._burst = burst
        self._slot_class = slot  # tests drive the loop with slots that start no process
        self._signer = Signer(secret)
        self._secret_source = secret_source  # where the secret came from, for the quarantine message
        self._stop = StopRequest()
        self._link = Link(url, keys, self._signer, self.worker_id, self.queues)
        self._lease = Lease(self._link, self._stop, describe=self._describe, check=self.check_strays,
                            reconnected=self.link_ok)
        # One lock (re-entrant) guards the pool, the ledger and the intake's counters.
        self._lock = threading.Condition()
        self._ledger = Ledger(self._lock)
        self._pool: Pool | None = None  # children start in run()
        self._intake: Intake | None = None
        self._recorder: Recorder | None = None
        self._collector: Collector | None = None
        self._shutdown: Shutdown | None = None
        self._cutoffs_state: Cutoffs | None = None
        #: Running average of job durations, measured here; pacing's main input. Until
        #: measured, jobs are assumed slow: no prefetch.
        self.avg_job_s = config.SLOW_JOB_S
        self._attempts = Attempts(self._ledger, self._link, self._signer)
        self._parking_state: Parking | None = None  # job processes parked on inboxes of their own: start()
        self._recheck_strays = False

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "start() starts the pool"
        return self._pool

    @property
    def _parking(self) -> Parking:
        assert self._parking_state is not None, "start() starts the parking"
        return self._parking_state

    @property
    def _cutoffs(self) -> Cutoffs:
        assert self._cutoffs_state is not None, "start() starts the cutoffs"
        return self._cutoffs_state

    @property
    def intake(self) -> Intake:
        assert self._intake is not None, "start() starts the intake"
        return self._intake

    @property
    def recorder(self) -> Recorder:
        assert self._recorder is not None, "start() starts the recorder"
        return self._recorder

    @property
    def collector(self) -> Collector:
        assert self._collector is not None, "start() starts the collector"
        return self._collector

    @property
    def shutdown(self) -> Shutdown:
        assert self._shutdown is not None, "start() starts the shutdown"
        return self._shutdown

    # -- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped (or, in burst mode, until the queues are empty); returns the exit code."""
        # The main loop must get the GIL back quickly when a child answers,
        # even while the fetcher thread is busy with a claim.
        sys.setswitchinterval(config.WORKER_SWITCH_INTERVAL_S)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: self._stop.on_signal())
            signal.signal(signal.SIGINT, lambda signum, frame: self._stop.on_signal())
        log.info("worker %s: queues %s, concurrency %d, Redis %s, signing %s", self.worker_id,
                 ",".join(self.queues), self.concurrency, config.mask_url(self.url),
                 "on" if self._signer.secret else "off")
        if not self.start():
            log.info("worker %s: stopped before it could reach Redis", self.worker_id)
            self._link.close()
            return 0
        threads = [threading.Thread(target=self._lease.run, name="cw-lease", daemon=True),
                   threading.Thread(target=self.intake.run, name="cw-fetcher", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            while self.step():
                pass
        finally:
            self._stop.advance(Step.FINISHED)
            with self._lock:
                self._lock.notify_all()
            for thread in threads:
                thread.join(timeout=config.BLOCK_TIMEOUT_S + 2)
            self.finish()
        log.info("worker %s: stopped after %d job(s)", self.worker_id, self.jobs_done)
        return 0

    def start(self) -> bool:
        """Load the scripts, take our lease (riding out an outage), start the children.

        False if asked to stop before Redis could be reached. :meth:`run`
        then starts the lease and fetcher threads and calls :meth:`step`
        until it says to stop; a test can instead drive the loop itself,
        one step at a time, with no threads (``step(wait=False)``).
        """
        while not self._stop.graceful:
            try:
                self._link.load_scripts()
                self._lease.renew()
                self.link_ok()
                break
            except LinkDown as down:
                self._stop.wait(Step.GRACEFUL, self._link.failed(down))
        else:
            return False
        self._parking_state = Parking(self._link)
        setup = Setup(self.url, self._signer.secret, self._keys.namespace, self.worker_id, self.queues,
                      attention=self._parking.attention_w)
        self._pool = Pool(self.concurrency, setup, self._lock, slot=self._slot_class)
        self._cutoffs_state = Cutoffs(self._pool, self._lock, self._attempts, self._parking, self._stop)
        self._intake = Intake(self._link, self._lease, self._pool, self._ledger, self._stop, self._signer, self,
                              burst=self._burst, secret_source=self._secret_source)
        self._recorder = Recorder(self._link, self._lease, self._ledger, self._intake, self._pool, self._stop, self)
        self._collector = Collector(self._pool, self._lock, self._attempts, self._parking, self._cutoffs_state,
                                    self._intake, self._stop, self)
        self._shutdown = Shutdown(self._link, self._pool, self._lock, self._ledger, self._attempts, self._parking,
                                  self._intake, self._recorder, self.worker_id)
        return True

    def step(self, *, wait: bool = True) -> bool:
        """One turn of the main loop, phase by phase; False once the worker should stop."""
        if self._stop.hard:
            self.shutdown.stop_running_jobs()
            return False
        if self._stop.graceful and self.shutdown.stopped_serving():
            return False
        self.collector.wait_and_collect(self._sleep_s() if wait else 0.0)
        if self._recheck_strays:  # the pipes were just read (check_strays)
            self._recheck_strays = False
            try:
                self.recorder.check_strays()
            except LinkDown as down:  # the lease thread looks again within a third of a lease
                self._link.failed(down)
        self.jobs_done += self._cutoffs.enforce_timeouts() + self._cutoffs.enforce_cancels()
        self.pool.ask_back_stuck(time.monotonic() - pacing.stuck_after_s(self.avg_job_s))
        self.dispatch()
        self._call_back_parked()
        with self._lock:
            due = self.recorder.due_in() <= 0
        if due:
            self.recorder.record()
        self._attempts.send_progress_if_due()
        return True

    # -- phase: wait (for the collector) ------------------------------------------------------

    def _sleep_s(self) -> float:
        now = time.monotonic()
        busy = [job for job in self.pool.running()]
        deadlines = [d for job in busy if (d := job.deadline) is not None]
        stuck_s = pacing.stuck_after_s(self.avg_job_s)
        deadlines += [s.sent[0].started + stuck_s for s in self.pool.slots if len(s.sent) > 1 + len(s.asked_back)]
        with self._lock:
            deadlines.append(now + self.recorder.due_in())
        deadlines += pacing.jit_wakeups((job.started for job in busy), now, self.avg_job_s)
        return pacing.sleep_s(deadlines, now)

    # -- phase: timeouts and cancellations (cutoffs) ------------------------------------------

    def cancel(self, job_ids: list[str]) -> None:
        """Stop these jobs if we hold them (the intake read their cancellation); the loop acts at once."""
        self._cutoffs.cancel(job_ids)

    # -- phase: dispatch -----------------------------------------------------------------------

    def dispatch(self) -> None:
        """Start ready jobs on idle children, oldest first; for short jobs, write a few ahead."""
        pool = self.pool
        with self._lock:
            if not self._stop.graceful:
                self._shed_excess()
                for slot in pool.slots:  # idle children first (not those parked on their inboxes)
                    if pool.ready and not slot.sent and slot.alive and not self._parking.holds(slot):
                        running = pool.ready.popleft()
                        # Nothing else waiting: someone may be waiting on this one job. Its
                        # child records the outcome itself, one hop fewer (worker.direct) --
                        # unless outcomes must wait for a replica: only the worker's own
                        # recording does that (and resends what no replica confirmed).
                        running.direct = not pool.ready and not self._link.replica_ack
                        # ...and re-parks us, with itself parked on an inbox of its own (parking), if
                        # we were parked: the queues were empty, or a hand-off took our last room (a
                        # worker with one job process is unparked by every hand-off).
                        running.repark = running.direct and (self.intake.queues_empty or self.intake.handed_last_room)
                        slot.start(running)
                        self.mark_started(running)
                if pool.ready and self._parking.count():
                    self._parking.want(len(pool.ready))  # only parked children are idle: call them back
                ahead = pacing.ahead(self.avg_job_s)
                for slot in pool.slots:  # then, for short jobs, a few ahead per child
                    while (pool.ready and 0 < len(slot.sent) <= ahead and not slot.asked_back and slot.alive
                           and not slot.may_park and pool.ready[0].payload_bytes <= config.MAX_SEND_AHEAD_BYTES):
                        slot.start(pool.ready.popleft())
            if self.hunger() or self._ledger.starts:
                self._lock.notify_all()  # the fetcher may wait for work

    def mark_started(self, running: Running) -> None:
        """A job heads its child now; if it was claimed ahead, charge its attempt (lock held)."""
        if running.prefetched:
            running.prefetched = False
            self._ledger.add_start(Start(running.id, running.claimed.token))

    def _shed_excess(self) -> None:
        """Jobs turned out slow: give back what was claimed ahead beyond our capacity (lock held)."""
        ready = self.pool.ready
        n = pacing.excess(len(ready), self.capacity(), self.pool.in_children(), self.concurrency, self.avg_job_s)
        # Newest first: each RPUSH goes to the queue's taking end, so the oldest is taken first.
        for running in [ready.pop() for _ in range(n)]:
            self._attempts.give_back(running)

    # -- pacing inputs (the Host interface of the intake) -----------------------------------------

    def capacity(self) -> int:
        ending = 0
        if pacing.is_slow(self.avg_job_s):
            ending = pacing.ending_soon((j.started for j in self.pool.running()), time.monotonic(), self.avg_job_s)
        return pacing.capacity(self.concurrency, self.avg_job_s, ending)

    def hunger(self) -> int:
        """How many more jobs to claim now (lock held)."""
        stopping = self._stop.graceful or (self._intake is not None and self._intake.quarantined)
        return pacing.hunger(self.capacity(), self.pool.held(), stopping)

    def starting_now(self) -> int:
        """Of the jobs claimed now, how many go straight to an idle child (lock held)."""
        return pacing.starting_now(self.pool.idle_count(), len(self.pool.ready))

    def parked_children(self) -> int:
        """How many job processes are parked on their own inboxes (lock held)."""
        return self._parking.count()

    def link_ok(self) -> None:
        """A round trip worked; if it ends an outage, reconcile (a claim reply may have been lost)."""
        if self._link.succeeded() and self._intake is not None:
            self._intake.needs_reconcile = True
            self._stop.wake()

    # -- parked children (cwredis.worker.parking) ---------------------------------------------

    def _call_back_parked(self) -> None:
        """Call parked children back if jobs wait for them, or we reconcile, stop or are quarantined."""
        with self._lock:
            if self.intake.needs_reconcile or self.intake.quarantined:
                self._parking.want_all()
        self._parking.unpark_due()
        with self._lock:
            silent = [self.pool.slots[i] for i in self._parking.silent(time.monotonic())]
        for slot in silent:
            log.warning("worker %s: job process %d did not answer being called back from its inbox within %.0f s; "
                        "replacing it", self.worker_id, slot.index, ANSWER_WITHIN_S)
            self.collector.handle(self.pool.died(slot))

    # -- outcomes ------------------------------------------------------------------------------

    def fail(self, running: Running, reply: Err) -> None:
        """End an attempt with a failure, queued for recording (the intake's rejected and corrupt jobs)."""
        self._attempts.record(running, reply)

    def check_strays(self) -> None:
        """From the lease thread: jobs stranded in our in-flight list (a late claim) are given back.

        While children are parked, a job one took may be in its pipe unread (parking): the loop reads
        the pipes, then looks itself.
        """
        with self._lock:
            parked = self._parking_state is not None and self._parking.count()
        if parked:
            self._recheck_strays = True
            self._stop.wake()
        elif self._recorder is not None:
            self._recorder.check_strays()

    def _describe(self) -> dict[str, str]:
        """What the heartbeat publishes about us (cw-admin shows it)."""
        with self._lock:
            heads = list(self.pool.running()) if self._pool is not None else []
        wall_ms = time.time() * 1000 - time.monotonic() * 1000  # started is monotonic: cw-admin needs wall time
        info = {"queues": ",".join(self.queues), "concurrency": str(self.concurrency),
                "running": ",".join(job.id for job in heads), "since": str(self.since),
                # cw-admin running's elapsed_s: JOBID:EPOCH_MS of each job heading a child
                "started": ",".join(f"{job.id}:{int(wall_ms + job.started * 1000)}" for job in heads)}
        if self._intake is not None and self._intake.quarantined:  # for good: only a restart ends it
            info["quarantined"] = "1"
        return info

    def finish(self) -> None:
        """Stop the children; record what is owed, hand back the rest, unregister (cwredis.worker.shutdown)."""
        self.shutdown.finish()
