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
from .serialization import ARGS, Corrupt, Rejected, Signer, encode_error
from .slots import Running, Slot

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
        self._lock = threading.Condition()  # guards slots' job/idle state
        self._claim_lock = threading.Lock()  # claims and reconciliation never overlap
        self._slots: list[Slot] = []
        self._idle: list[Slot] = []
        self._fetcher_busy = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Outcomes and requeues not yet recorded (Redis away): retried, never dropped.
        self._unsent_outcomes: list[Completion] = []
        self._unsent_requeues: list[Requeue] = []
        self._needs_reconcile = False
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
        self._idle = list(self._slots)
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
            with self._lock:
                busy = [slot for slot in self._slots if slot.job is not None]
                drained = self._stopping.is_set() and not busy and not self._fetcher_busy
            if drained:
                if self._flush_pending():
                    return
                continue
            timeout = 0.0 if (self._unsent_outcomes or self._unsent_requeues) else self._wait_timeout(busy)
            ready = wait_connections([s.outbox for s in busy if s.outbox] + [self._wake_r], timeout)
            freed = 0
            for conn in ready:
                if conn == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                slot = next(s for s in busy if s.outbox is conn)
                self._collect(slot)
                freed += 1
            self._enforce_timeouts()
            self._record(claim_more=freed > 0)

    def _wait_timeout(self, busy: list[Slot]) -> float:
        deadlines = [s.job.deadline for s in busy if s.job and s.job.deadline is not None]
        if not deadlines:
            return 0.5
        return max(0.0, min(0.5, min(deadlines) - time.monotonic()))

    # -- outcomes ----------------------------------------------------------------

    def _collect(self, slot: Slot) -> None:
        """Read one finished attempt from a child (or notice the child died)."""
        running = slot.job
        assert running is not None
        try:
            message = slot.outbox.recv() if slot.outbox else None
        except (EOFError, OSError):
            message = None
        if message is None:
            code = slot.exit_code()
            slot.close_pipes()
            slot.spawn()
            self._retry_or_fail(running, "lost", f"the process running the job died (exit code {code})", 0)
        elif message[0] == "ok":
            self._outcome(running, "ok", message[2])
        else:
            _, _, reason, error, tb = message
            self._outcome(running, "err", encode_error(reason, error, tb), reason, error, tb)
        self._free(slot)

    def _free(self, slot: Slot) -> None:
        with self._lock:
            slot.job = None
            self._idle.append(slot)
            self._lock.notify_all()
        self.jobs_done += 1

    def _outcome(self, running: Running, kind: str, body: bytes, reason: str = "", error: str = "",
                 tb: str = "") -> None:
        claimed, spec = running.claimed, running.spec
        if kind == "ok":
            body = self._signer.seal(b"result", body)
        self._unsent_outcomes.append(Completion(
            claimed.id, claimed.token, self._keys.results(spec.client), self._keys.channel(spec.client),
            kind, body, reason, error, tb))

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
            running = slot.job
            if running is None or running.deadline is None or now < running.deadline:
                continue
            slot.kill()
            slot.spawn()
            delay = min(config.RETRY_DELAY_S * 2 ** (running.claimed.attempts - 1), config.RETRY_DELAY_MAX_S)
            self._retry_or_fail(running, "timeout", f"the job ran longer than its timeout of {running.spec.timeout_s:g}s",
                                delay)
            self._free(slot)

    def _record(self, claim_more: bool) -> None:
        """Send unsent outcomes and requeues and, in the same round trip, claim work for idle slots."""
        outcomes, requeues = self._unsent_outcomes, self._unsent_requeues
        if not outcomes and not requeues and not self._needs_reconcile:
            return
        if self._needs_reconcile and not self._reconcile():
            return
        reserved: list[Slot] = []
        if claim_more and not self._stopping.is_set():
            with self._lock:  # reserve the slots first: the fetcher takes idle ones too
                reserved, self._idle = self._idle, []
        claim = bool(reserved)
        with self._claim_lock:
            pipe = self._redis.pipeline(transaction=False)
            if outcomes:
                self._scripts.complete(pipe, worker_id=self.worker_id, outcomes=outcomes,
                                       done_ttl_ms=config.DONE_TTL_S * 1000,
                                       result_ttl_ms=config.RESULT_TTL_S * 1000)
            if requeues:
                self._scripts.requeue(pipe, worker_id=self.worker_id, jobs=requeues)
            if claim:
                self._scripts.claim(pipe, worker_id=self.worker_id, queues=self.queues, lease_ms=self.lease_ms,
                                    max_count=len(reserved))
            try:
                replies = pipe.execute()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # complete and requeue are fenced, so sending them again is safe;
                # a claim whose reply was lost is undone by reconciliation.
                self._needs_reconcile = self._needs_reconcile or claim
                self._release(*reserved)
                self._reconnector.failed(exc)
                return
        if self._reconnector.succeeded():
            self._needs_reconcile = True
        self._unsent_outcomes, self._unsent_requeues = [], []
        if outcomes:
            self._log_refused(outcomes, replies[0], "outcome")
        if claim:
            self._dispatch_claimed(replies[-1], reserved)

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
            ids = [s.job.claimed.id for s in self._slots if s.job is not None]
        ids += [c.id for c in self._unsent_outcomes] + [r.id for r in self._unsent_requeues]
        return ids

    # -- claiming and dispatching -----------------------------------------------

    def _dispatch_claimed(self, reply: Any, reserved: list[Slot]) -> int:
        """Start each claimed job on one of the ``reserved`` slots (claims never exceed them).

        Slots left over go back to the idle list. Returns how many jobs started.
        """
        claimed, dropped = self._scripts.parse_claim(reply)
        for job_id in dropped:
            log.warning("worker %s: dropped queue entry %r: it names no pending job", self.worker_id, job_id)
        if not claimed:
            self._release(*reserved)
            return 0
        try:
            self._catalog.fetch([c.spec for c in claimed], [c.function for c in claimed])
            self._catalog.fetch([], [s.env for c in claimed if (s := self._catalog.spec(c.spec))])
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._reconnector.failed(exc)  # what is missing fails below as corrupt... unless we retry
            self._catalog_retry(claimed)
        started = 0
        for slot, item in zip(reserved, claimed):
            if self._start(slot, item):
                started += 1
            else:
                self._release(slot)
        self._release(*reserved[len(claimed):])
        if started:
            self._wake()
        return started

    def _catalog_retry(self, claimed: list[Claimed]) -> None:
        def fetch() -> None:
            self._catalog.fetch([c.spec for c in claimed], [c.function for c in claimed])
            self._catalog.fetch([], [s.env for c in claimed if (s := self._catalog.spec(c.spec))])
        self._reconnector.call(fetch)

    def _start(self, slot: Slot, claimed: Claimed) -> bool:
        """Send a claimed job to ``slot``'s child; on bad input, fail the job instead (False)."""
        spec = self._catalog.spec(claimed.spec)
        if spec is None:
            log.warning("job %s: its spec is missing or garbage; failing it as corrupt", claimed.id)
            self._unsent_outcomes.append(Completion(
                claimed.id, claimed.token, self._keys.results(""), "", "err", b"", "corrupt",
                "job spec is missing", "the job's shared record (client, queue, limits) is missing or invalid"))
            return False
        running = Running(claimed, spec)
        try:
            args = self._signer.open(ARGS, claimed.args)
            function = self._catalog.function(claimed.function)
            env = self._catalog.env(spec.env)
        except Rejected as exc:
            self._fail_now(running, "rejected", f"RejectedError: {exc}")
            return False
        except Corrupt as exc:
            self._fail_now(running, "corrupt", f"CorruptError: {exc}")
            return False
        message = ("run", claimed.id, claimed.function,
                   None if claimed.function in slot.functions else function, args, spec.env,
                   None if slot.env == spec.env else env)
        with self._lock:
            slot.job = running
        try:
            slot.send(message)
        except (OSError, ValueError):
            # The child died between jobs; the main loop sees its pipe close and retries the job.
            pass
        slot.functions.add(claimed.function)
        slot.env = spec.env
        return True

    def _fail_now(self, running: Running, reason: str, error: str) -> None:
        log.warning("job %s: failing it (%s): %s", running.claimed.id, reason, error)
        self._outcome(running, "err", encode_error(reason, error, error), reason, error, error)

    def _release(self, *slots: Slot) -> None:
        """Return reserved slots that got no job to the idle list."""
        with self._lock:
            for slot in slots:
                if slot.job is None and slot not in self._idle:
                    self._idle.append(slot)
            self._lock.notify_all()

    # -- the fetcher thread --------------------------------------------------------

    def _fetch_loop(self) -> None:
        block_s = config.BLOCK_TIMEOUT_S if len(self.queues) == 1 else config.MULTI_QUEUE_BLOCK_S
        if self.burst:
            block_s = min(block_s, 0.1)
        turn = 0
        while not self._stopping.is_set():
            with self._lock:
                while not self._idle and not self._stopping.is_set():
                    self._lock.wait(0.5)
                if self._stopping.is_set():
                    return
                slot = self._idle.pop()
                self._fetcher_busy = True
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
            finally:
                with self._lock:
                    self._fetcher_busy = False
            if not got:
                turn += 1
                if self.burst and self._is_idle():
                    log.info("worker %s: queues empty (burst mode); stopping", self.worker_id)
                    self._stopping.set()
                    self._wake()

    def _fetch_one(self, slot: Slot, queue: str, block_s: float) -> bool:
        """Wait up to ``block_s`` for a job on ``queue`` and start it on ``slot``; False if none came."""
        if time.monotonic() - self._last_heartbeat > self.lease_ms / 2000:
            self._heartbeat()  # be registered before taking anything, so a crash is recoverable
        if len(self.queues) > 1:
            # Several queues: BLMOVE watches one, so first take from any, in priority order.
            with self._claim_lock:
                reply = self._scripts.claim(self._redis, worker_id=self.worker_id, queues=self.queues,
                                            lease_ms=self.lease_ms, max_count=1)
            claimed, _ = self._scripts.parse_claim(reply)
            if claimed:
                self._dispatch_claimed(reply, [slot])
                return True
        # BLMOVE, not BRPOP: the id lands in our in-flight list atomically, so if
        # we die before claim.lua runs, the coordinator's sweep of this worker
        # puts it back on its queue.
        job_id = self._redis.blmove(self._keys.queue(queue), self._keys.inflight(self.worker_id), block_s,
                                    "RIGHT", "LEFT")
        if job_id is None or self._stopping.is_set():
            # (A job taken while stopping stays in our in-flight list; _finish gives it back.)
            self._release(slot)
            return job_id is not None
        with self._claim_lock:
            reply = self._scripts.claim(self._redis, worker_id=self.worker_id, queues=[], lease_ms=self.lease_ms,
                                        max_count=1, first_id=job_id.decode())
        self._reconnector.succeeded()
        self._dispatch_claimed(reply, [slot])
        return True

    def _is_idle(self) -> bool:
        with self._lock:
            return all(s.job is None for s in self._slots) and not self._unsent_outcomes

    # -- the heartbeat thread ----------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew the lease and pick up the coordinator's lease setting."""
        pipe = self._redis.pipeline(transaction=False)
        self._scripts.heartbeat(pipe, worker_id=self.worker_id, lease_ms=self.lease_ms, info={
            "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(self.queues),
            "concurrency": str(self.concurrency), "running": ",".join(self._owned_ids()[:50]),
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

    def _stop_running_jobs(self) -> None:
        """Second signal: kill the children now and give their jobs back without using an attempt."""
        with self._lock:
            running = [(slot, slot.job) for slot in self._slots if slot.job is not None]
        for slot, job in running:
            slot.kill()
            assert job is not None
            self._unsent_requeues.append(Requeue(job.claimed.id, job.claimed.token,
                                                 self._keys.queue(job.spec.queue), "release"))
            with self._lock:
                slot.job = None
        if running:
            log.warning("worker %s: stopped %d running job(s); they go back to their queues", self.worker_id,
                        len(running))

    def _finish(self) -> None:
        """Record what is left, give back taken-but-unstarted ids, unregister, stop the children."""
        for slot in self._slots:
            if slot.job is None:
                slot.shutdown()
            else:
                slot.kill()
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
