"""The worker: ``python -m cwredis.worker [REDIS_URL] [--concurrency N] [--queue NAME]...``.

One supervisor process runs up to N jobs at once, each in a long-lived child
process (:mod:`cwredis.slots`). Three threads, each with its own Redis
connection from the pool, so none waits behind another's blocking call:

* the **main loop** collects outcomes from the children, records them
  (``complete.lua``) and, in the same round trip, claims the next jobs for
  the slots that just freed up; it also enforces job timeouts;
* the **fetcher** waits for work with a blocking ``BLMOVE`` while a slot is
  idle and the queues are empty -- never polling;
* the **heartbeat** renews this worker's lease (one lease for all its jobs).
  It lives in the supervisor, not in the job's interpreter, so a job stuck in
  C code holding its GIL cannot lose its lease.

A job's lifecycle here: queue --BLMOVE/LMOVE--> our in-flight list
--claim.lua--> running in a child --complete.lua--> done or failed. Every
step is one atomic script or command; an id is always in a queue or in our
in-flight list, where the coordinator finds it if we die.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from multiprocessing.connection import wait as wait_connections
from typing import Any, Sequence

import redis

from . import config
from .catalog import Catalog
from .connection import Reconnector, connect, describe, is_transient, setup_logging
from .errors import ConfigError
from .keys import DEFAULT_KEYS, Keys
from .scripts import Claimed, Completion, Requeue, Scripts
from .serialization import ARGS, RESULT, Corrupt, Rejected, Signer, encode_error, frame_outcome
from .slots import MAX_SEND_AHEAD_BYTES, Running, Slot

log = logging.getLogger("cwredis.worker")


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
        self._stopping = threading.Event()  # first signal: take no new job
        self._hard_stop = threading.Event()  # second signal: stop running jobs now
        self._threads_stop = threading.Event()
        self._reconnector = Reconnector(url, "worker", self._threads_stop)
        self.lease_ms = int(config.DEFAULT_LEASE_S * 1000)
        self._last_heartbeat = 0.0
        self._lock = threading.Condition()  # guards every slot's jobs/sent/reserved
        self._claim_lock = threading.Lock()  # claims and reconciliation never overlap
        self._slots: list[Slot] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Outcomes and requeues not yet recorded (Redis away): retried, never dropped.
        self._unsent_outcomes: list[Completion] = []
        self._unsent_requeues: list[Requeue] = []
        self._needs_reconcile = False
        self._avg_job_s = config.SLOW_JOB_S  # until measured, assume jobs are slow: no prefetch
        self._first_unsent = 0.0  # when the oldest unsent outcome was produced
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
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info("worker %s: queues %s, concurrency %d, Redis %s, signing %s", self.worker_id,
                 ",".join(self.queues), self.concurrency, config.mask_url(self.url),
                 "on" if self._signer.secret else "off")
        self._reconnector.call(self._heartbeat)
        self._slots = [Slot(i) for i in range(self.concurrency)]
        threads = [threading.Thread(target=self._heartbeat_loop, name="cw-heartbeat", daemon=True),
                   threading.Thread(target=self._fetch_loop, name="cw-fetcher", daemon=True)]
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
            if self._stopping.is_set():
                self._give_back_unstarted()
            with self._lock:
                busy = [slot for slot in self._slots if slot.sent]
                drained = self._stopping.is_set() and not any(s.jobs or s.reserved for s in self._slots)
            if drained:
                if self._flush_pending():
                    return
                continue
            ready = wait_connections([s.outbox for s in busy if s.outbox] + [self._wake_r], self._wait_timeout(busy))
            for conn in ready:
                if conn == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                slot = next(s for s in busy if s.outbox is conn)
                self._collect(slot)
            self._enforce_timeouts()
            if self._should_record():
                self._record(claim_more=True)
            if self._progress and time.monotonic() - self._progress_sent >= config.PROGRESS_INTERVAL_S:
                self._send_progress()

    def _wait_timeout(self, busy: list[Slot]) -> float:
        deadlines = [d for s in busy if s.jobs and (d := s.jobs[0].deadline) is not None]
        if self._unsent_outcomes or self._unsent_requeues:
            deadlines.append(self._first_unsent + config.RECORD_DELAY_S)
        if not deadlines:
            return 0.5
        return max(0.0, min(0.5, min(deadlines) - time.monotonic()))

    def _should_record(self) -> bool:
        """Record now, or let outcomes gather for one round trip? Now whenever a slot runs dry.

        An idle slot means a waiting client or an empty queue: record at once
        (latency). While every slot still has work queued, outcomes gather
        until a slot is half empty, many are waiting, or RECORD_DELAY_S passed
        (throughput: one round trip for many jobs).
        """
        if self._needs_reconcile or self._unsent_requeues:
            return True
        if not self._unsent_outcomes:
            return False
        if len(self._unsent_outcomes) >= config.MAX_RECORD_BATCH or self._stopping.is_set():
            return True
        if time.monotonic() - self._first_unsent >= config.RECORD_DELAY_S:
            return True
        low_water = self.depth // 2
        with self._lock:
            return any(len(s.jobs) <= low_water for s in self._slots)

    @property
    def depth(self) -> int:
        """Jobs a slot holds at once: 1 for slow jobs; more for short ones, so the child never waits for Redis."""
        if self._avg_job_s >= config.SLOW_JOB_S:
            return 1
        return max(2, min(config.MAX_PREFETCH, int(config.PREFETCH_WINDOW_S / max(self._avg_job_s, 1e-5))))

    # -- outcomes ----------------------------------------------------------------

    def _collect(self, slot: Slot) -> int:
        """Read the outcomes the child has ready (or notice it died); returns how many attempts ended."""
        ended = read = 0
        while slot.sent and slot.outbox is not None:
            try:
                if read and not slot.outbox.poll():
                    break
                message = slot.outbox.recv()
            except (EOFError, OSError):
                message = None
            read += 1
            if message is not None and message[0] == "progress":
                self._progress[message[1]] = (slot.jobs[0], message[2], message[3])
                continue
            with self._lock:
                running = slot.jobs.popleft()
                slot.sent -= 1
                if not slot.jobs:
                    self._lock.notify_all()  # an idle slot: the fetcher may wait on the queue for it
            now = time.monotonic()
            self._avg_job_s += 0.2 * ((now - running.started) - self._avg_job_s)
            ended += 1
            self.jobs_done += 1
            if message is None:
                code = slot.exit_code()
                self._respawn(slot)
                self._retry_or_fail(running, "lost", f"the process running the job died (exit code {code})", 0)
                break
            if message[0] == "ok":
                self._outcome(running, "ok", message[2], output=message[3])
            else:
                _, _, reason, error, tb, output = message
                self._outcome(running, "err", encode_error(reason, error, tb), reason, error, tb, output)
            if slot.jobs:
                slot.jobs[0].started = now
        self._pump(slot)
        return ended

    def _respawn(self, slot: Slot) -> None:
        """A fresh child; jobs that were written to the dead one's pipe are written again."""
        slot.close_pipes()
        slot.spawn()

    def _outcome(self, running: Running, kind: str, payload: bytes, reason: str = "", error: str = "",
                 tb: str = "", output: str = "") -> None:
        """Queue an attempt's outcome for recording; the client gets ``output`` printed with it."""
        claimed, spec = running.claimed, running.spec
        if kind == "ok":
            payload = self._signer.seal(RESULT, payload)
        if not self._unsent_outcomes:
            self._first_unsent = time.monotonic()
        self._progress.pop(claimed.id, None)
        tail = output[-config.FAILED_OUTPUT_TAIL_BYTES:] if kind == "err" else ""
        self._unsent_outcomes.append(Completion(claimed.id, claimed.token, spec.client, kind,
                                                frame_outcome(output, payload), reason, error, tb, tail))

    def _retry_or_fail(self, running: Running, reason: str, explanation: str, delay_s: float) -> None:
        """An attempt was cut short: try again if attempts remain, else fail with ``reason``."""
        claimed, spec = running.claimed, running.spec
        if claimed.attempts < spec.max_attempts:
            log.warning("job %s: %s (attempt %d of %d); will retry", claimed.id, explanation,
                        claimed.attempts, spec.max_attempts)
            self._unsent_requeues.append(Requeue(
                claimed.id, claimed.token, self._keys.queue(spec.queue), "retry", int(delay_s * 1000)))
        else:
            error = f"{reason.capitalize()}Error: {explanation} (attempt {claimed.attempts} of {spec.max_attempts})"
            log.warning("job %s: %s", claimed.id, error)
            self._outcome(running, "err", encode_error(reason, error, error), reason, error, error)

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            running = slot.running
            if running is None or running.deadline is None or now < running.deadline:
                continue
            slot.kill()
            with self._lock:
                slot.jobs.popleft()
                self._lock.notify_all()
            self._respawn(slot)
            self.jobs_done += 1
            delay = min(config.RETRY_DELAY_S * 2 ** (running.claimed.attempts - 1), config.RETRY_DELAY_MAX_S)
            self._retry_or_fail(running, "timeout",
                                f"the job ran longer than its timeout of {running.spec.timeout_s:g}s", delay)
            self._pump(slot)

    def _record(self, claim_more: bool) -> None:
        """Send unsent outcomes and requeues and, in the same round trip, claim work for hungry slots."""
        outcomes, requeues = self._unsent_outcomes, self._unsent_requeues
        if not outcomes and not requeues and not self._needs_reconcile:
            return
        if self._needs_reconcile and not self._reconcile():
            return
        want = self._hunger() if claim_more and not self._stopping.is_set() else 0
        with self._claim_lock:
            pipe = self._redis.pipeline(transaction=False)
            if outcomes:
                self._scripts.complete(pipe, worker_id=self.worker_id, outcomes=outcomes,
                                       done_ttl_ms=config.DONE_TTL_S * 1000,
                                       result_ttl_ms=config.RESULT_TTL_S * 1000)
            if requeues:
                self._scripts.requeue(pipe, worker_id=self.worker_id, jobs=requeues)
            if want:
                self._scripts.claim(pipe, worker_id=self.worker_id, queues=self.queues, lease_ms=self.lease_ms,
                                    max_count=want)
            try:
                replies = pipe.execute()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # complete and requeue are fenced, so sending them again is safe;
                # a claim whose reply was lost is undone by reconciliation.
                self._needs_reconcile = self._needs_reconcile or bool(want)
                self._reconnector.failed(exc)
                return
        if self._reconnector.succeeded():
            self._needs_reconcile = True
        self._unsent_outcomes, self._unsent_requeues = [], []
        if outcomes:
            self._log_refused(outcomes, replies[0], "outcome")
        if want:
            self._assign_claimed(replies[-1])

    def _send_progress(self) -> None:
        """Pass the latest progress of running jobs to their clients (best effort: never retried)."""
        reports, self._progress = self._progress, {}
        self._progress_sent = time.monotonic()
        pipe = self._redis.pipeline(transaction=False)
        for job_id, (running, fraction, message) in reports.items():
            self._scripts.progress(pipe, job_id=job_id, token=running.claimed.token, client_id=running.spec.client,
                                   fraction=fraction, message=message)
        try:
            pipe.execute()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.debug("progress reports dropped: %s", describe(exc))

    def _hunger(self) -> int:
        """How many more jobs the slots not waiting on the fetcher can take."""
        depth = self.depth
        with self._lock:
            return sum(max(0, depth - len(s.jobs)) for s in self._slots if not s.reserved)

    def _log_refused(self, items: Sequence[Completion | Requeue], flags: Sequence[int], what: str) -> None:
        for item, flag in zip(items, flags):
            if not int(flag):
                log.warning("job %s: %s dropped: this attempt no longer owns the job (lease expired)", item.id, what)

    def _flush_pending(self) -> bool:
        """Before exiting: record what is unsent; False while Redis is away (caller loops)."""
        if self._unsent_outcomes or self._unsent_requeues or self._needs_reconcile:
            self._record(claim_more=False)
        return not (self._unsent_outcomes or self._unsent_requeues or self._needs_reconcile)

    def _reconcile(self) -> bool:
        """After an outage, give back in-flight ids we are not running (a lost claim reply, a server restart)."""
        with self._claim_lock:
            keep = self._owned_ids()
            try:
                released = self._scripts.release_inflight(self._redis, worker_id=self.worker_id, keep=keep,
                                                          unregister=False)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._reconnector.failed(exc)
                return False
        self._needs_reconcile = False
        if released:
            log.warning("worker %s: gave back %d job(s) it had taken but was not running", self.worker_id, released)
        return True

    def _owned_ids(self) -> list[str]:
        with self._lock:
            ids = [running.claimed.id for s in self._slots for running in s.jobs]
        ids += [c.id for c in self._unsent_outcomes] + [r.id for r in self._unsent_requeues]
        return ids

    # -- claiming and assigning ------------------------------------------------------

    def _assign_claimed(self, reply: Any, reserved: Slot | None = None) -> int:
        """Give each claimed job to a slot (``reserved`` first, then the emptiest); returns how many."""
        claimed, dropped = self._scripts.parse_claim(reply)
        for job_id in dropped:
            log.warning("worker %s: dropped queue entry %r: it names no pending job", self.worker_id, job_id)
        if claimed:
            self._reconnector.call(lambda: self._load_records(claimed))
        assigned = 0
        for item in claimed:
            running = self._prepare(item)
            if running is None:
                continue
            with self._lock:
                # (The fetcher may have reserved a slot since we claimed: then share it.)
                slot = reserved or min(self._slots, key=lambda s: (s.reserved, len(s.jobs)))
                slot.reserved = False if slot is reserved else slot.reserved
                reserved = None
                slot.jobs.append(running)
            self._pump(slot)
            assigned += 1
        if reserved is not None:
            self._release(reserved)
        if assigned:
            self._wake()
        return assigned

    def _load_records(self, claimed: list[Claimed]) -> None:
        self._catalog.fetch([c.spec for c in claimed], [c.function for c in claimed])
        self._catalog.fetch([], [s.env for c in claimed if (s := self._catalog.spec(c.spec))])

    def _prepare(self, claimed: Claimed) -> Running | None:
        """Verify and gather a claimed job's payload; on bad input, fail the job instead (None)."""
        spec = self._catalog.spec(claimed.spec)
        if spec is None:
            log.warning("job %s: its spec is missing or garbage; failing it as corrupt", claimed.id)
            self._unsent_outcomes.append(Completion(
                claimed.id, claimed.token, "", "err", b"", "corrupt",
                "job spec is missing", "the job's shared record (client, queue, limits) is missing or invalid"))
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

    def _pump(self, slot: Slot) -> None:
        """Write the slot's next jobs into its child's pipe.

        The running job, plus -- for short jobs with small payloads -- the rest
        of the slot's prefetched jobs, so the child keeps working while we
        wait on Redis. Small: a full pipe would block this loop.
        """
        limit = self.depth
        with self._lock:
            while slot.sent < min(len(slot.jobs), limit):
                running = slot.jobs[slot.sent]
                if slot.sent and len(running.args) > MAX_SEND_AHEAD_BYTES:
                    break
                if slot.sent == 0:
                    running.started = time.monotonic()
                try:
                    slot.send(running.message(slot))
                except (OSError, ValueError, AssertionError):
                    pass  # the child died; the main loop sees its pipe close and retries the job
                slot.sent += 1

    def _fail_now(self, running: Running, reason: str, error: str) -> None:
        log.warning("job %s: failing it (%s): %s", running.claimed.id, reason, error)
        self._outcome(running, "err", encode_error(reason, error, error), reason, error, error)

    def _release(self, slot: Slot) -> None:
        """The fetcher got no job for its reserved slot."""
        with self._lock:
            slot.reserved = False
            self._lock.notify_all()

    # -- the fetcher thread --------------------------------------------------------

    def _fetch_loop(self) -> None:
        block_s = config.BLOCK_TIMEOUT_S if len(self.queues) == 1 else config.MULTI_QUEUE_BLOCK_S
        if self.burst:
            block_s = min(block_s, 0.1)
        turn = 0
        while not self._stopping.is_set():
            with self._lock:
                while not self._stopping.is_set() and not any(s.is_idle for s in self._slots):
                    self._lock.wait(0.5)
                if self._stopping.is_set():
                    return
                slot = next(s for s in self._slots if s.is_idle)
                slot.reserved = True
            try:
                got = self._fetch_one(slot, self.queues[turn % len(self.queues)], block_s)
            except Exception as exc:
                self._release(slot)
                if not is_transient(exc):
                    log.exception("worker %s: fetcher error", self.worker_id)
                    self._threads_stop.wait(1.0)
                else:
                    self._needs_reconcile = True
                    self._reconnector.failed(exc)
                    self._wake()
                got = True
            if not got:
                turn += 1
                if self.burst and self._is_idle():
                    log.info("worker %s: queues empty (burst mode); stopping", self.worker_id)
                    self._stopping.set()
                    self._wake()

    def _fetch_one(self, slot: Slot, queue: str, block_s: float) -> bool:
        """Wait up to ``block_s`` for a job on ``queue`` for the reserved ``slot``; False if none came."""
        if time.monotonic() - self._last_heartbeat > self.lease_ms / 2000:
            self._heartbeat()  # be registered before taking anything, so a crash is recoverable
        if len(self.queues) > 1:
            # Several queues: BLMOVE watches one, so first take from any, in priority order.
            with self._claim_lock:
                reply = self._scripts.claim(self._redis, worker_id=self.worker_id, queues=self.queues,
                                            lease_ms=self.lease_ms, max_count=1)
            if reply[0]:
                self._assign_claimed(reply, reserved=slot)
                return True
        # BLMOVE, not BRPOP: the id lands in our in-flight list atomically, so if
        # we die before claim.lua runs, the coordinator's sweep of this worker
        # puts it back on its queue.
        job_id: bytes | None = self._redis.blmove(  # type: ignore[assignment]
            self._keys.queue(queue), self._keys.inflight(self.worker_id), block_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        if job_id is None or self._stopping.is_set():
            # (A job taken while stopping stays in our in-flight list; _finish gives it back.)
            self._release(slot)
            return job_id is not None
        with self._claim_lock:
            reply = self._scripts.claim(self._redis, worker_id=self.worker_id, queues=[], lease_ms=self.lease_ms,
                                        max_count=1, first_id=job_id.decode())
        self._reconnector.succeeded()
        self._assign_claimed(reply, reserved=slot)
        return True

    def _is_idle(self) -> bool:
        with self._lock:
            return all(not s.jobs for s in self._slots) and not self._unsent_outcomes

    # -- the heartbeat thread ----------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew the lease and pick up the coordinator's lease setting."""
        pipe = self._redis.pipeline(transaction=False)
        self._scripts.heartbeat(pipe, worker_id=self.worker_id, lease_ms=self.lease_ms, info={
            "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(self.queues),
            "concurrency": str(self.concurrency), "running": ",".join(self._running_ids()),
        })
        pipe.hget(self._keys.config, "lease_ms")
        was_valid, lease = pipe.execute()
        if not int(was_valid) and self._last_heartbeat:
            log.warning("worker %s: our lease had expired (were we stopped or cut off?); the coordinator "
                        "requeued our jobs and their results from here will be refused", self.worker_id)
        self._last_heartbeat = time.monotonic()
        try:
            lease_ms = int(lease) if lease else self.lease_ms
        except ValueError:
            lease_ms = self.lease_ms
        if lease_ms > 0 and lease_ms != self.lease_ms:
            log.info("worker %s: lease timeout is %.1fs (set by the coordinator)", self.worker_id, lease_ms / 1000)
            self.lease_ms = lease_ms

    def _running_ids(self) -> list[str]:
        with self._lock:
            return [r.claimed.id for s in self._slots if (r := s.running) is not None]

    def _heartbeat_loop(self) -> None:
        while not self._threads_stop.wait(self.lease_ms / 3000):
            try:
                self._heartbeat()
                if self._reconnector.succeeded():
                    self._needs_reconcile = True
                    self._wake()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("worker %s: heartbeat failed", self.worker_id)
                else:
                    self._reconnector.failed(exc)

    # -- stopping ------------------------------------------------------------------

    def _give_back_unstarted(self) -> None:
        """Stopping: jobs claimed ahead but not yet written to a child go back unrun (attempt refunded)."""
        with self._lock:
            for slot in self._slots:
                while len(slot.jobs) > slot.sent:
                    running = slot.jobs.pop()
                    self._unsent_requeues.append(Requeue(running.claimed.id, running.claimed.token,
                                                         self._keys.queue(running.spec.queue), "release"))

    def _stop_running_jobs(self) -> None:
        """Second signal: kill the children now and give their jobs back without using an attempt."""
        stopped = 0
        for slot in self._slots:
            if slot.sent:
                slot.kill()
            with self._lock:
                while slot.jobs:
                    running = slot.jobs.popleft()
                    self._unsent_requeues.append(Requeue(running.claimed.id, running.claimed.token,
                                                         self._keys.queue(running.spec.queue), "release"))
                    stopped += 1
                slot.sent = 0
        if stopped:
            log.warning("worker %s: stopped %d job(s); they go back to their queues", self.worker_id, stopped)

    def _finish(self) -> None:
        """Record what is left, give back taken-but-unstarted ids, unregister, stop the children."""
        for slot in self._slots:
            if slot.jobs:
                slot.kill()
            else:
                slot.shutdown()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self._record(claim_more=False)
                if self._unsent_outcomes or self._unsent_requeues:
                    continue
                with self._claim_lock:
                    self._scripts.release_inflight(self._redis, worker_id=self.worker_id, keep=[], unregister=True)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("worker %s: cannot reach Redis to hand back jobs (%s); the coordinator will recover "
                            "them when our lease expires", self.worker_id, describe(exc))
                time.sleep(0.5)
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
