"""The worker: ``python -m cwredis.worker [REDIS_URL] [--concurrency N] [--queue NAME]...``.

One supervisor process runs up to N jobs at once, each in a long-lived child
process (:mod:`cwredis.slots`). Three threads, each with its own connection
from the pool, so none waits behind another's blocking call:

* the **main loop** hands ready jobs to children, collects outcomes, enforces
  job timeouts, and records outcomes (``complete.lua``) -- in the same round
  trip claiming the next jobs (``claim.lua``). Outcomes gather while children
  still have work, so one round trip carries many; when a child runs dry it
  records at once (latency). Short jobs are written a few ahead into each
  child's pipe, so children keep working during that round trip. A job
  started on an idle child with nothing else waiting is recorded by the
  child itself (:mod:`cwredis.outcomes`), one hop fewer for a waiting client;
* the **fetcher** waits, while the worker is parked (a child idle, the
  queues empty), with a blocking ``BLMPOP`` on the worker's inbox -- never
  polling. There ``submit.lua`` hands it new jobs already claimed, so an idle
  worker starts a job without a claim round trip; other paths that queue a
  job (retries, recoveries) push a "wake", and the worker claims;
* the **heartbeat** renews this worker's lease (one lease for all its jobs).
  It lives in the supervisor, not in the job's interpreter, so a job stuck in
  C code holding its GIL cannot lose its lease.

Claimed jobs wait in one FIFO (``ready``) that any idle child takes from, so
jobs start in the order they were taken and a short job never waits behind a
long one while a child is free. For short jobs the worker claims a few more
than it has children (prefetch), so children never wait for a round trip.

A job's path: queue --claim.lua--> our in-flight list and ``ready`` (or,
while we are parked, submit.lua --> our in-flight list and inbox --BLMPOP-->
``ready``) --> a child --complete.lua (sent by us, or by the child)--> done
or failed. Each step is one
atomic script; an id is always in a queue or our in-flight list, where the
coordinator finds it if we die.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Sequence, TypeVar

from . import config
from .catalog import Catalog
from .connection import Pinned, Reconnector, connect, describe, is_transient, setup_logging
from .errors import ConfigError
from .keys import DEFAULT_KEYS, Keys
from .scripts import Claimed, ClaimReply, Completion, Requeue, Scripts, parse_handed
from .outcomes import completion
from .serialization import ARGS, Corrupt, Rejected, Signer
from .slots import MAX_SEND_AHEAD_BYTES, Running, Slot

log = logging.getLogger("cwredis.worker")
T = TypeVar("T")


class Worker:
    """Claims jobs from ``queues`` and runs up to ``concurrency`` at once."""

    def __init__(
        self,
        url: str,
        *,
        queues: Sequence[str] = (config.DEFAULT_QUEUE,),
        concurrency: int = 1,
        burst: bool = False,
        secret: bytes | None = None,
        keys: Keys = DEFAULT_KEYS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.url = url
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.burst = burst
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._keys = keys
        self._signer = Signer(secret)
        self._redis = connect(url, "worker")
        self._scripts = Scripts(self._redis, keys)
        self._catalog = Catalog(self._redis, keys, self._signer)
        self._inbox = Pinned(self._redis)  # the fetcher's: a hand-off is on the latency path
        self._stopping = threading.Event()  # first signal: take no new job
        self._hard_stop = threading.Event()  # second signal: stop running jobs now
        self._threads_stop = threading.Event()
        self._reconnector = Reconnector(url, "worker", self._threads_stop)
        self.lease_ms = int(config.DEFAULT_LEASE_S * 1000)
        self._renewed = 0.0  # when the newest round trip that renewed our lease was sent (monotonic)
        # _lock guards the slots, `ready` and the unsent lists; _claim_lock
        # serialises claims (and reconciliation) so jobs start in taken order.
        self._lock = threading.Condition()
        self._claim_lock = threading.Lock()
        self._slots: list[Slot] = []
        self._ready: collections.deque[Running] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Outcomes and requeues not yet recorded (Redis away): retried, never dropped.
        self._unsent_outcomes: list[Completion] = []
        self._unsent_requeues: list[Requeue] = []
        self._unsent_starts: list[tuple[str, str]] = []  # (id, token) of claimed-ahead jobs that started
        self._sending: list[str] = []  # ids in a round trip right now
        self._given_back: list[Running] = []  # jobs a child just gave back (see _collect)
        self._first_unsent = 0.0  # when the oldest unsent outcome or start appeared
        self._needs_reconcile = False
        self._reconciles = 0  # how many reconciliations ran (a hand-off read across one may be stale)
        self._queues_empty = False  # the last claim came up short
        self._room = 0  # jobs submit may still hand us (parked while > 0): the fetcher waits on the inbox
        self._avg_job_s = config.SLOW_JOB_S  # until measured, assume jobs are slow: no prefetch
        # Latest progress report per running job, sent at most every PROGRESS_INTERVAL_S.
        self._progress: dict[str, tuple[Running, float, str | None]] = {}
        self._progress_sent = 0.0
        self.jobs_done = 0

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stopping.is_set():
            self._hard_stop.set()
        else:
            self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # -- running ---------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped (or, in burst mode, until the queues are empty); returns the exit code."""
        # The main loop must get the GIL back quickly when a child answers,
        # even while the fetcher thread is busy with a claim.
        sys.setswitchinterval(config.WORKER_SWITCH_INTERVAL_S)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info("worker %s: queues %s, concurrency %d, Redis %s, signing %s", self.worker_id,
                 ",".join(self.queues), self.concurrency, config.mask_url(self.url),
                 "on" if self._signer.secret else "off")
        self._reconnector.call(self._scripts.load)
        self._reconnector.call(self._heartbeat)
        setup = ("config", self.url, self._signer.secret, self._keys.namespace, self.worker_id, self.queues)
        self._slots = [Slot(i, setup) for i in range(self.concurrency)]
        threads = [threading.Thread(target=target, name=name, daemon=True) for target, name in (
            (self._heartbeat_loop, "cw-heartbeat"), (self._fetch_loop, "cw-fetcher"))]
        for thread in threads:
            thread.start()
        try:
            self._main_loop()
        finally:
            self._threads_stop.set()
            self._stopping.set()
            with self._lock:
                self._lock.notify_all()
            for thread in threads:
                thread.join(timeout=config.BLOCK_TIMEOUT_S + 2)
            self._finish()
        log.info("worker %s: stopped after %d job(s)", self.worker_id, self.jobs_done)
        return 0

    def _main_loop(self) -> None:
        while True:
            if self._hard_stop.is_set():
                self._stop_running_jobs()
                return
            if self._stopping.is_set() and self._room:
                self._room = 0
                self._reconcile()  # no more hand-offs; those not read yet go back
            with self._lock:
                if self._stopping.is_set():
                    self._give_back_ready()
                busy = [slot for slot in self._slots if slot.job is not None]
                if self._stopping.is_set() and not busy and self._all_recorded():
                    return
            # A fresh poll object each time: cheaper than multiprocessing's wait(), which builds a selector.
            # Every child is watched, idle ones too: the fetcher may start a job on one
            # while we sleep here, and its outcome must wake us with no hand-off.
            poller = select.poll()
            watched: dict[int, Slot | None] = {self._wake_r: None}
            poller.register(self._wake_r, select.POLLIN)
            for slot in self._slots:
                if slot.outbox is not None:
                    watched[slot.outbox.fileno()] = slot
                    poller.register(slot.outbox.fileno(), select.POLLIN)
            for fd, _ in poller.poll(self._wait_timeout(busy) * 1000):
                if (ready := watched[fd]) is None:
                    os.read(self._wake_r, 4096)
                else:
                    self._collect(ready)
            self._enforce_timeouts()
            self._ask_back_stuck()
            self._dispatch()
            with self._lock:
                due = self._record_due_in() <= 0
            if due:
                self._record()
            if self._progress and time.monotonic() - self._progress_sent >= config.PROGRESS_INTERVAL_S:
                self._send_progress()

    def _wait_timeout(self, busy: list[Slot]) -> float:
        deadlines = [d for s in busy if (job := s.job) is not None and (d := job.deadline) is not None]
        deadlines += [s.sent[0].started + self._stuck_s() for s in busy if len(s.sent) > 1 + len(s.asked_back)]
        with self._lock:
            deadlines.append(time.monotonic() + self._record_due_in())
        if self._avg_job_s >= config.SLOW_JOB_S:  # wake to claim just in time (see capacity)
            lead = max(0.0, self._avg_job_s - config.JIT_LEAD_S)
            now = time.monotonic()
            deadlines += [t for s in busy if (job := s.job) is not None and (t := job.started + lead) > now]
        if not deadlines:
            return 0.5
        return max(0.0, min(0.5, min(deadlines) - time.monotonic()))

    def _all_recorded(self) -> bool:
        return not (self._unsent_outcomes or self._unsent_requeues or self._sending)

    def _dispatch(self) -> None:
        """Start ready jobs on idle children, oldest first (none once stopping: they go back)."""
        with self._lock:
            if not self._stopping.is_set():
                self._shed_excess()
                for slot in self._slots:  # idle children first
                    if self._ready and not slot.sent and slot.outbox is not None:
                        running = self._ready.popleft()
                        # Nothing else waiting: someone may be waiting on this one job. Its
                        # child records the outcome itself, one hop fewer (cwredis.outcomes).
                        running.direct = not self._ready
                        running.repark = running.direct and self._queues_empty
                        slot.start(running)
                        self._mark_started(running)
                ahead = self._ahead()
                for slot in self._slots:  # then, for short jobs, a few ahead per child
                    while (self._ready and 0 < len(slot.sent) <= ahead and not slot.asked_back
                           and slot.outbox is not None and len(self._ready[0].args) <= MAX_SEND_AHEAD_BYTES):
                        slot.start(self._ready.popleft())
            if self._hunger() or self._unsent_starts:
                self._lock.notify_all()  # the fetcher may wait for work

    def _mark_started(self, running: Running) -> None:
        """A job heads its child now; if it was claimed ahead, charge its attempt (call with _lock held)."""
        if running.prefetched:
            running.prefetched = False
            if not self._unsent_outcomes and not self._unsent_starts:
                self._first_unsent = time.monotonic()
            self._unsent_starts.append((running.claimed.id, running.claimed.token))

    def _ahead(self) -> int:
        """Jobs to write ahead to a busy child: enough short ones to cover a round trip to Redis, else none."""
        if self._avg_job_s >= config.SLOW_JOB_S:
            return 0
        return max(1, min(config.MAX_AHEAD, int(config.PREFETCH_WINDOW_S / max(self._avg_job_s, 1e-5))))

    def _ask_back_stuck(self) -> None:
        """Jobs written ahead wait behind one that runs long: ask the child to give them back."""
        stuck_before = time.monotonic() - self._stuck_s()
        with self._lock:
            for slot in self._slots:
                if len(slot.sent) > 1 and slot.sent[0].started < stuck_before:
                    for running in list(slot.sent)[1:]:
                        if running.claimed.id not in slot.asked_back:
                            slot.asked_back.add(running.claimed.id)
                            try:
                                slot.ask_back(running.claimed.id)
                            except (OSError, ValueError, AssertionError):
                                pass  # the child died; its pipe closing hands the jobs back

    def _stuck_s(self) -> float:
        """How long a running job may hold up the job written ahead of it: many times the average."""
        return max(config.STUCK_FACTOR * self._avg_job_s, config.STUCK_MIN_S)

    @property
    def capacity(self) -> int:
        """Jobs to hold at once: one per child, plus a prefetch so no child waits on Redis.

        Short jobs: several per child. Slow jobs: one more for each child whose
        job should end within JIT_LEAD_S (by the running average), claimed just
        in time -- a freed child starts at once, and no job waits long here
        while a worker elsewhere could run it.
        """
        if self._avg_job_s >= config.SLOW_JOB_S:
            return self.concurrency + self._ending_soon()
        per_child = max(2, min(config.MAX_PREFETCH, int(config.PREFETCH_WINDOW_S / max(self._avg_job_s, 1e-5))))
        return self.concurrency * per_child

    def _ending_soon(self) -> int:
        """Children whose job should end within JIT_LEAD_S, by the running average (call with _lock held)."""
        due = time.monotonic() - max(0.0, self._avg_job_s - config.JIT_LEAD_S)
        return sum(1 for s in self._slots if (job := s.job) is not None and job.started <= due)

    def _hunger(self) -> int:
        """How many more jobs to claim now (call with _lock held)."""
        if self._stopping.is_set():
            return 0
        held = len(self._ready) + sum(len(s.sent) for s in self._slots)
        return max(0, self.capacity - held)

    def _shed_excess(self) -> None:
        """Jobs turned out slow: give back what was claimed ahead beyond our capacity (call with _lock held).

        Prefetch is for short jobs; when the running average says jobs are slow
        after all, the surplus goes back to the front of its queue for idle
        workers elsewhere, unrun and uncharged.
        """
        busy = sum(len(s.sent) for s in self._slots)
        excess = len(self._ready) - max(0, self.capacity - busy)
        slack = 1 if self._avg_job_s >= config.SLOW_JOB_S else self.concurrency  # no churn from a noisy average
        if excess < slack:
            return
        # Newest first: each RPUSH goes to the queue's taking end, so the oldest is taken first.
        for running in [self._ready.pop() for _ in range(excess)]:
            self._unsent_requeues.append(Requeue(running.claimed.id, running.claimed.token,
                                                 running.spec.queue, "release"))
        self._lock.notify_all()

    def _starting_now(self) -> int:
        """Of the jobs claimed now, how many go straight to an idle child (call with _lock held).

        Those are charged their attempt by the claim itself; the rest wait in
        ``ready`` and are charged when they start.
        """
        idle = sum(1 for s in self._slots if s.job is None)
        return max(0, idle - len(self._ready))

    # -- outcomes ----------------------------------------------------------------

    def _collect(self, slot: Slot) -> None:
        """Read what the child has to say: progress, a job given back or to resend, outcomes, or its death."""
        while slot.outbox is not None:
            try:
                message = slot.outbox.recv()
            except (EOFError, OSError):
                self._child_died(slot)
                return
            kind, job_id = message[0], message[1]
            if kind == "progress":
                if (running := slot.find(job_id)) is not None:
                    self._progress[job_id] = (running, message[2], message[3])
            elif kind == "unsent":
                with self._lock:
                    slot.asked_back.discard(job_id)
                    if message[2] and (running := slot.take(job_id)) is not None:
                        self._given_back.append(running)
            elif kind == "resend":
                if (running := slot.find(job_id)) is not None:
                    slot.forget_cache()
                    slot.resend(running)
            else:
                with self._lock:
                    running = slot.take(job_id)
                    if slot.sent:
                        self._mark_started(slot.sent[0])
                    if not slot.sent:
                        self._lock.notify_all()  # an idle child: the fetcher may wait on the queue for it
                if running is not None:
                    self._finish_attempt(running, message)
            if not slot.outbox.poll():
                break
        with self._lock:  # jobs a child gave back go first in line, in their order
            self._ready.extendleft(reversed(self._given_back))
            self._given_back.clear()

    def _child_died(self, slot: Slot) -> None:
        """The child's pipe closed: its running job was cut short; jobs written ahead go back to ``ready``."""
        code = slot.exit_code()
        with self._lock:  # the new child is in place before the fetcher can start a job on this slot again
            head = slot.sent.popleft() if slot.sent else None
            self._ready.extendleft(reversed(slot.sent))
            slot.sent.clear()
            slot.asked_back.clear()
            slot.close_pipes()
            slot.spawn()
        if head is None:
            log.warning("worker %s: an idle child died (exit code %s); started another", self.worker_id, code)
            return
        self.jobs_done += 1
        self._retry_or_fail(head, "lost", f"the process running the job died (exit code {code})", 0)

    def _finish_attempt(self, running: Running, message: tuple[Any, ...]) -> None:
        """A child's reply ends an attempt: "ok"/"err" to record, or "recorded" by the child itself."""
        now = time.monotonic()
        self._avg_job_s += 0.2 * ((now - running.started) - self._avg_job_s)
        self.jobs_done += 1
        if message[0] != "recorded":
            self._outcome(running, message)
            return
        job_id, flag, room = message[1], message[2], message[3]
        self._progress.pop(job_id, None)
        with self._lock:  # complete.lua charged it: no start marker to send
            self._unsent_starts = [start for start in self._unsent_starts if start[0] != job_id]
            if running.repark and room:
                self._room = room  # the child re-parked us: the fetcher waits on the inbox
                if self._stopping.is_set():
                    self._needs_reconcile = True  # re-parked as we stop: unpark
            else:
                self._queues_empty = False  # not parked (a job was queued meanwhile?): claim
            self._lock.notify_all()
        if not flag:
            log.warning("job %s: outcome dropped: this attempt no longer owns the job (lease expired)", job_id)

    def _outcome(self, running: Running, reply: tuple[Any, ...]) -> None:
        """Queue an attempt's outcome (a child's "ok"/"err" reply) for recording."""
        claimed = running.claimed
        self._progress.pop(claimed.id, None)
        outcome = completion(claimed.id, claimed.token, running.spec.client, reply, self._signer)
        with self._lock:
            if not self._unsent_outcomes and not self._unsent_starts:
                self._first_unsent = time.monotonic()
            self._unsent_outcomes.append(outcome)
            self._lock.notify_all()

    def _retry_or_fail(self, running: Running, reason: str, explanation: str, delay_s: float) -> None:
        """An attempt was cut short: try again if attempts remain, else fail with ``reason``."""
        claimed, spec = running.claimed, running.spec
        if claimed.attempts < spec.max_attempts:
            log.warning("job %s: %s (attempt %d of %d); will retry", claimed.id, explanation,
                        claimed.attempts, spec.max_attempts)
            with self._lock:
                self._unsent_requeues.append(Requeue(
                    claimed.id, claimed.token, spec.queue, "retry", int(delay_s * 1000)))
                self._lock.notify_all()
        else:
            error = f"{reason.capitalize()}Error: {explanation} (attempt {claimed.attempts} of {spec.max_attempts})"
            log.warning("job %s: %s", claimed.id, error)
            self._outcome(running, ("err", claimed.id, reason, error, error, ""))

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            running = slot.job
            if running is None or running.deadline is None or now < running.deadline:
                continue
            slot.kill()
            slot.spawn()
            with self._lock:
                slot.sent.popleft()
                self._ready.extendleft(reversed(slot.sent))  # written ahead, never started
                slot.sent.clear()
                slot.asked_back.clear()
            self.jobs_done += 1
            delay = min(config.RETRY_DELAY_S * 2 ** (running.claimed.attempts - 1), config.RETRY_DELAY_MAX_S)
            self._retry_or_fail(running, "timeout",
                                f"the job ran longer than its timeout of {running.spec.timeout_s:g}s", delay)

    def _send_progress(self) -> None:
        """Pass the latest progress of running jobs to their clients (best effort: never retried)."""
        reports, self._progress = self._progress, {}
        self._progress_sent = time.monotonic()
        pipe = self._redis.pipeline(transaction=False)
        for job_id, (running, fraction, message) in reports.items():
            self._scripts.progress(pipe, job_id=job_id, token=running.claimed.token, client_id=running.spec.client,
                                   fraction=fraction, message=message)
        try:
            self._scripts.execute(pipe)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.debug("progress reports dropped: %s", describe(exc))

    # -- recording: one round trip for outcomes, requeues, starts and claims ----------

    def _record_due_in(self) -> float:
        """Seconds until the next round trip is worth making; 0: now (call with _lock held).

        Now, when a child is (or is about to be) left without work -- the
        latency case -- or there is a requeue or a reconnect to handle.
        Otherwise outcomes and claims gather, so one round trip carries many:
        until half the capacity can be claimed, MAX_RECORD_BATCH outcomes wait,
        or the oldest outcome has waited RECORD_DELAY_S.
        """
        if self._needs_reconcile or self._unsent_requeues:
            return 0.0
        hunger = 0 if self._queues_empty else self._hunger()
        starving = any(s.job is None for s in self._slots) and not self._ready
        if hunger and (starving or len(self._ready) < self.concurrency or hunger >= self.capacity // 2):
            return 0.0
        if self._unsent_outcomes or self._unsent_starts:
            # A start marker alone is never urgent: it only counts the attempt, and
            # a short job's outcome soon carries it (complete.lua charges it).
            if (starving and self._unsent_outcomes) or len(self._unsent_outcomes) >= config.MAX_RECORD_BATCH:
                return 0.0
            return self._first_unsent + config.RECORD_DELAY_S - time.monotonic()
        return 0.5

    def _record(self) -> bool:
        """One round trip: record outcomes and requeues, and claim what the children can take.

        Returns False if Redis could not be reached (everything stays queued for the next try).
        """
        if self._needs_reconcile and not self._reconcile():
            return False
        with self._claim_lock:
            with self._lock:
                outcomes, self._unsent_outcomes = self._unsent_outcomes, []
                requeues, self._unsent_requeues = self._unsent_requeues, []
                # A job that started and already finished is charged by complete.lua itself.
                finished = {c.id for c in outcomes}
                starts = [start for start in self._unsent_starts if start[0] not in finished]
                self._unsent_starts = []
                self._sending = [c.id for c in outcomes] + [r.id for r in requeues]
                want = self._hunger()
                start_count = self._starting_now()
            pipe = self._redis.pipeline(transaction=False)
            if starts:  # first: a job that started and already finished is charged before it completes
                self._scripts.start(pipe, jobs=starts)
            if outcomes:
                self._scripts.complete(pipe, worker_id=self.worker_id, outcomes=outcomes,
                                       done_ttl_ms=config.DONE_TTL_S * 1000,
                                       result_ttl_ms=config.RESULT_TTL_S * 1000)
            if requeues:
                self._scripts.requeue(pipe, worker_id=self.worker_id, jobs=requeues)
            if want:
                self._scripts.claim(pipe, worker_id=self.worker_id, queues=self.queues, lease_ms=self.lease_ms,
                                    max_count=want, start_count=start_count, park=True)
            try:
                if want:  # the claim renews our lease
                    replies = self._renewing(lambda: self._scripts.execute(pipe))
                else:
                    replies = self._scripts.execute(pipe) if (starts or outcomes or requeues) else []
            except Exception as exc:
                with self._lock:  # start, complete and requeue are fenced: sending them again is safe
                    self._unsent_outcomes[:0] = outcomes
                    self._unsent_requeues[:0] = requeues
                    self._unsent_starts[:0] = starts
                    self._sending = []
                if not is_transient(exc):
                    raise
                # A claim whose reply was lost is undone by reconciliation.
                self._needs_reconcile = self._needs_reconcile or bool(want)
                self._reconnector.failed(exc)
                return False
            if want:
                self._accept_claimed(self._scripts.parse_claim(replies[-1]), want, start_count)
            with self._lock:
                self._sending = []
                self._lock.notify_all()
        if self._reconnector.succeeded():
            self._needs_reconcile = True
        if outcomes:
            self._log_refused(outcomes, replies[1 if starts else 0], "outcome")
        return True

    def _log_refused(self, items: Sequence[Completion | Requeue], flags: Sequence[int], what: str) -> None:
        for item, flag in zip(items, flags):
            if not int(flag):
                log.warning("job %s: %s dropped: this attempt no longer owns the job (lease expired)", item.id, what)

    def _reconcile(self) -> bool:
        """After an outage, give back in-flight ids we are not running (a lost claim reply, a server restart)."""
        with self._claim_lock:
            keep = self._owned_ids()
            try:
                released = self._scripts.release_inflight(self._redis, worker_id=self.worker_id, queues=self.queues,
                                                          keep=keep, unregister=False)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._reconnector.failed(exc)
                return False
            self._reconciles += 1
            self._room = 0  # unparked: the next claim parks us again
        self._needs_reconcile = False
        if released:
            log.warning("worker %s: gave back %d job(s) it had taken but was not running", self.worker_id, released)
        return True

    def _owned_ids(self) -> list[str]:
        with self._lock:
            ids = [running.claimed.id for s in self._slots for running in s.sent]
            ids += [r.claimed.id for r in self._ready] + list(self._sending)
            ids += [c.id for c in self._unsent_outcomes] + [r.id for r in self._unsent_requeues]
        return ids

    # -- claiming ------------------------------------------------------------------

    def _accept_claimed(self, reply: ClaimReply, wanted: int, start_count: int) -> int:
        """Verify claimed jobs and queue them as ready (call with _claim_lock held); returns how many were claimed.

        Jobs past the first ``start_count`` were claimed ahead: marked so their start is recorded.
        """
        for job_id in reply.dropped:
            log.warning("worker %s: dropped queue entry %r: it names no pending job", self.worker_id, job_id)
        self._queues_empty = len(reply.claimed) < wanted
        self._room = reply.room
        return self._accept(reply.claimed, start_count, reply.handed, reply.garbled)

    def _accept(self, claimed: list[Claimed], start_count: int, handed: int, garbled: int) -> int:
        """Queue verified jobs as ready and start what idle children can take (call with _claim_lock held).

        The first ``handed`` came through the inbox: claimed ahead by
        submit.lua, like every job past the first ``start_count``, and so
        marked for their start to be recorded. Garbled inbox messages name
        jobs in our in-flight list that we cannot run: reconciliation gives
        them back.
        """
        if garbled:
            log.warning("worker %s: %d unreadable message(s) in our inbox; giving back what they held",
                        self.worker_id, garbled)
            self._needs_reconcile = True
        if claimed:
            self._reconnector.call(lambda: self._load_records(claimed))
        accepted = []
        for index, item in enumerate(claimed):
            running = self._prepare(item)
            if running is not None:
                running.prefetched = index < handed or index >= start_count
                accepted.append(running)
        with self._lock:
            self._ready.extend(accepted)
        if accepted:
            self._dispatch()  # start them from this thread: no hand-off on the latency path
            if self._avg_job_s >= config.SLOW_JOB_S or any(r.deadline is not None for r in accepted):
                self._wake()  # the main loop's next deadline (timeout, claim just in time) may be sooner now
        return len(claimed)

    def _load_records(self, claimed: list[Claimed]) -> None:
        self._catalog.fetch([c.spec for c in claimed], [c.function for c in claimed])
        self._catalog.fetch([], [s.env for c in claimed if (s := self._catalog.spec(c.spec))])

    def _prepare(self, claimed: Claimed) -> Running | None:
        """Verify and gather a claimed job's payload; on bad input, fail the job instead (None)."""
        spec = self._catalog.spec(claimed.spec)
        if spec is None:
            log.warning("job %s: its spec is missing or garbage; failing it as corrupt (no client can be told)",
                        claimed.id)
            with self._lock:
                self._unsent_outcomes.append(Completion(
                    claimed.id, claimed.token, "", "err", b"", "corrupt", "job spec is missing",
                    "the job's shared record (client, queue, limits) is missing or invalid"))
            return None
        running = Running(claimed, spec)
        try:
            running.args = self._signer.open(ARGS, claimed.args)
            running.function = self._catalog.function(claimed.function)
            running.env = self._catalog.env(spec.env)
        except Rejected as exc:
            self._fail_now(running, "rejected", f"RejectedError: {exc}")
            return None
        except Corrupt as exc:
            self._fail_now(running, "corrupt", f"CorruptError: {exc}")
            return None
        return running

    def _fail_now(self, running: Running, reason: str, error: str) -> None:
        log.warning("job %s: failing it (%s): %s", running.claimed.id, reason, error)
        self._outcome(running, ("err", running.claimed.id, reason, error, error, ""))

    # -- the fetcher thread --------------------------------------------------------

    def _fetch_loop(self) -> None:
        """Keep idle children fed: park, then wait on the inbox for hand-offs and wakes."""
        block_s = min(config.BLOCK_TIMEOUT_S, 0.1) if self.burst else config.BLOCK_TIMEOUT_S
        while True:
            with self._lock:
                # Wait until a child would sit idle: nothing ready, and the last claim came up short.
                while not self._stopping.is_set() and not (self._queues_empty and self._starting_now()):
                    self._lock.wait(0.5)
                if self._stopping.is_set():
                    return
                epoch = self._reconciles
            try:
                if not self._room:
                    self._claim_now()  # parks us if the queues are empty
                    continue
                # Everything there in one reply: a batch submit hands us a job per idle child.
                got: Any = self._inbox.execute("BLMPOP", block_s, 1, self._keys.inbox(self.worker_id), "LEFT",
                                               "COUNT", max(1, self._room))
                self._reconnector.succeeded()
                if got is not None:
                    self._take_handed(got[1], epoch)
                elif not self._claim_now() and self.burst and self._is_idle():
                    # Quiet for block_s: the claim renewed our parking (and would catch
                    # jobs queued with no wake, e.g. after a server restart forgot us).
                    log.info("worker %s: queues empty (burst mode); stopping", self.worker_id)
                    self._stopping.set()
                    self._wake()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("worker %s: fetcher error", self.worker_id)
                    self._threads_stop.wait(1.0)
                else:
                    self._needs_reconcile = True
                    self._reconnector.failed(exc)
                    with self._lock:
                        self._lock.notify_all()

    def _take_handed(self, messages: list[bytes], epoch: int) -> None:
        """Messages from our inbox: jobs submit.lua handed us (start them now), and wakes (claim).

        One read may bring both: the jobs are ours already, so they are taken
        before the claim a wake asks for.
        """
        claimed, wake, garbled = parse_handed(messages)
        if claimed or garbled:
            self._take_jobs(claimed, garbled, epoch)
        if wake:
            self._claim_now()

    def _take_jobs(self, claimed: list[Claimed], garbled: int, epoch: int) -> None:
        with self._claim_lock:
            if self._reconciles != epoch:
                # A reconciliation ran while this was on its way and may have given the
                # job back already: leave it to the next one (fenced, so nothing runs twice).
                self._needs_reconcile = True
                return
            self._room = max(0, self._room - len(claimed))
            handed = len(claimed)
            if claimed and time.monotonic() - self._renewed > self.lease_ms / 2000:
                claimed = self._confirm(claimed)
                handed = 0  # confirmed jobs were charged: they start now
            with self._lock:
                start_count = self._starting_now()
            self._accept(claimed, start_count, handed, garbled)

    def _confirm(self, claimed: list[Claimed]) -> list[Claimed]:
        """Jobs handed to us while our lease may have run out (were we frozen?): keep those still ours.

        Our blocking pop completes on the server even while this process is
        stopped; by the time we read it, the coordinator may have requeued the
        job elsewhere. One round trip renews our lease first -- from then on
        the coordinator leaves our jobs alone -- then start.lua charges each
        job only if this attempt still owns it.
        """
        pipe = self._redis.pipeline(transaction=False)
        self._scripts.heartbeat(pipe, worker_id=self.worker_id, lease_ms=self.lease_ms, info={})
        for c in claimed:
            self._scripts.start(pipe, jobs=[(c.id, c.token)])
        replies = self._renewing(lambda: self._scripts.execute(pipe))
        kept = [c for c, started in zip(claimed, replies[1:]) if int(started)]
        for c in claimed:
            if c not in kept:
                log.warning("job %s: handed to us while our lease ran out, and since requeued; not running it",
                            c.id)
        return kept

    def _claim_now(self) -> bool:
        """Claim what the children can take, parking if the queues are empty; True if anything was claimed."""
        with self._claim_lock:
            with self._lock:
                want = max(1, self._hunger())
                start_count = self._starting_now()
            reply = self._renewing(lambda: self._scripts.claim(
                self._redis, worker_id=self.worker_id, queues=self.queues, lease_ms=self.lease_ms, max_count=want,
                start_count=start_count, park=True))
            return self._accept_claimed(self._scripts.parse_claim(reply), want, start_count) > 0

    def _renewing(self, round_trip: Callable[[], T]) -> T:
        """Run a round trip that renews our lease, noting when it was sent (a lease runs from there)."""
        sent = time.monotonic()
        result = round_trip()
        self._renewed = max(self._renewed, sent)
        return result

    def _is_idle(self) -> bool:
        with self._lock:
            return all(not s.sent for s in self._slots) and not self._ready and self._all_recorded()

    # -- the heartbeat thread ----------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew the lease and pick up the coordinator's lease setting."""
        pipe = self._redis.pipeline(transaction=False)
        self._scripts.heartbeat(pipe, worker_id=self.worker_id, lease_ms=self.lease_ms, info={
            "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(self.queues),
            "concurrency": str(self.concurrency), "running": ",".join(self._running_ids()),
        })
        pipe.hget(self._keys.config, "lease_ms")
        renewed_before = self._renewed
        was_valid, lease = self._renewing(lambda: self._scripts.execute(pipe))
        if not int(was_valid) and renewed_before:
            log.warning("worker %s: our lease had expired (were we stopped or cut off?); the coordinator "
                        "requeued our jobs and their results from here will be refused", self.worker_id)
        try:
            lease_ms = int(lease) if lease else self.lease_ms
        except ValueError:
            lease_ms = self.lease_ms
        if lease_ms > 0 and lease_ms != self.lease_ms:
            log.info("worker %s: lease timeout is %.1fs (set by the coordinator)", self.worker_id, lease_ms / 1000)
            self.lease_ms = lease_ms

    def _running_ids(self) -> list[str]:
        with self._lock:
            return [job.claimed.id for s in self._slots if (job := s.job) is not None]

    def _heartbeat_loop(self) -> None:
        while not self._threads_stop.wait(self.lease_ms / 3000):
            try:
                self._heartbeat()
                if self._reconnector.succeeded():
                    self._needs_reconcile = True
                    with self._lock:
                        self._lock.notify_all()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("worker %s: heartbeat failed", self.worker_id)
                else:
                    self._reconnector.failed(exc)

    # -- stopping ------------------------------------------------------------------

    def _give_back_ready(self) -> None:
        """Stopping: claimed jobs that did not start go back unrun, attempt refunded (call with _lock held)."""
        while self._ready:
            running = self._ready.pop()
            self._unsent_requeues.append(Requeue(running.claimed.id, running.claimed.token,
                                                 running.spec.queue, "release"))
            self._lock.notify_all()

    def _stop_running_jobs(self) -> None:
        """Second signal: kill the children now and give their jobs back without using an attempt."""
        stopped = 0
        with self._lock:
            self._give_back_ready()
        for slot in self._slots:
            if not slot.sent:
                continue
            slot.kill()
            with self._lock:
                for running in slot.sent:
                    self._unsent_requeues.append(Requeue(running.claimed.id, running.claimed.token,
                                                         running.spec.queue, "release"))
                    stopped += 1
                slot.sent.clear()
        if stopped:
            log.warning("worker %s: stopped %d running job(s); they go back to their queues", self.worker_id,
                        stopped)

    def _finish(self) -> None:
        """Record what is left, give back claimed-but-unstarted jobs, unregister, stop the children."""
        for slot in self._slots:
            if slot.job is None:
                slot.shutdown()
            else:
                slot.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if (self._unsent_outcomes or self._unsent_requeues) and not self._record():
                    time.sleep(0.5)  # Redis away (the reconnector no longer waits: threads_stop is set)
                    continue
                with self._claim_lock:
                    self._scripts.release_inflight(self._redis, worker_id=self.worker_id, queues=self.queues, keep=[],
                                                   unregister=True)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("worker %s: cannot reach Redis to hand back jobs (%s); the coordinator will recover "
                            "them when our lease expires", self.worker_id, describe(exc))
                time.sleep(0.5)
        self._inbox.close()
        self._redis.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cw-worker", description="Run cwredis jobs: block-pop job ids from Redis queues and run them.")
    parser.add_argument("url", nargs="?", default=None,
                        help="Redis URL (default: $CWREDIS_URL, then $CWREDIS_HOME/url, then redis://localhost:6379/0)")
    parser.add_argument("--concurrency", "-c", type=int, default=1, metavar="N",
                        help="run up to N jobs at once, each in its own child process (default 1)")
    parser.add_argument("--queue", "-q", action="append", metavar="NAME",
                        help="queue to serve; repeat for several, earlier names first (default: default)")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty and nothing runs")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1:
        build_parser().error("--concurrency must be at least 1")
    setup_logging(args.log_level)
    url = config.resolve_url(args.url)
    try:
        worker = Worker(url, queues=args.queue or [config.DEFAULT_QUEUE], concurrency=args.concurrency,
                        burst=args.burst, secret=config.resolve_secret())
        return worker.run()
    except ConfigError as exc:
        print(f"cw-worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
