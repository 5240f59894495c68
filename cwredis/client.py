"""ClientThread: submit jobs, wait for them, and a background thread that receives their outcomes.

Outcomes wait durably in the client's list in Redis and are also published
on the client's channel, so a listening client runs the callback straight
from the message; pub/sub is only a shortcut, and :mod:`cwredis.outcome_list`
reads and trims the list. :mod:`cwredis.delivery` turns each outcome into
one callback (an outcome seen twice is dropped there) and keeps the table
of unfinished jobs. A stopping client trims what it delivered and, with
nothing left, deletes its list and counter. Jobs a server restarted from
older data lost after their submit returned are submitted again
(:mod:`cwredis.lost_jobs`).
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from typing import Any, Callable, Sequence

from . import config, progressbar
from .cancelling import Cancelling
from .connection import Subscription, connect, describe, is_transient
from .reachability import LastingError, Reconnector, check_can_start
from .delivery import Delivery, ErrorCallback, ProgressCallback, Resubmission, ResultCallback
from .keys import DEFAULT_KEYS, Keys
from .lost_jobs import LossWatch
from .outcome_list import OutcomeEntry, OutcomeList
from .outcomes import Decoded
from .scripts import Scripts
from .serialization import retry_on_names
from .session import SessionKeys
from .signing import Signer
from .submitter import Attached, SharedRecords, Submitter, job_batches

log = logging.getLogger("cwredis.client")

#: Even without a pub/sub wake-up (one lost in a blip), outstanding outcomes
#: are looked for this often.
SAFETY_POLL_S = 2.0


def _resolve(url: str | None, host: str | None) -> str:
    if url is not None and host is not None:
        raise ValueError("give url or host, not both")
    if host is not None:
        return f"redis://{host}:6379/0"
    return config.resolve_url(url)


class ClientThread(threading.Thread):
    """Submits jobs and calls ``callback(jobid, result)`` / ``error_callback(jobid, error)``.

    Callbacks run on this thread, one at a time, exactly once per job.
    Use as a context manager, or ``start()`` / ``wait()`` / ``stop()``.
    ``retry_on=(OSError, ...)``: a job that raised one of these is retried,
    with exponential back-off, within ``max_attempts``.
    """

    def __init__(
        self,
        callback: ResultCallback | None = None,
        url: str | None = None,
        *,
        host: str | None = None,
        error_callback: ErrorCallback | None = None,
        queue: str = config.DEFAULT_QUEUE,
        timeout: float | None = None,
        max_attempts: int = config.DEFAULT_MAX_ATTEMPTS,
        retry_on: Sequence[type[BaseException]] = (),
        progress_callback: ProgressCallback | None = None,
        forward_output: bool = True,
        secret: bytes | str | None = None,
        insecure: bool = False,
        session: str | None = None,
        keys: Keys = DEFAULT_KEYS,
    ) -> None:
        super().__init__(name="cwredis-client", daemon=True)
        self.url = _resolve(url, host)
        self.forward_output = forward_output
        self.client_id = secrets.token_urlsafe(9)
        self._keys = keys
        if isinstance(secret, str):
            secret = secret.encode()
        # Fail closed: no secret is a ConfigError unless insecure (see config.require_secret).
        self._signer = Signer(config.check_secret(secret, "secret=").value if secret is not None
                              else config.require_secret(insecure))
        self._stop_event = threading.Event()
        self.lasting = LastingError(f"client {self.client_id}")  # the results thread's, while it lasts
        self._reconnector = Reconnector(self.url, "client", self._stop_event)
        self._redis = connect(self.url, "client")
        check_can_start(self._redis, self.url)  # a wrong URL raises here; warns near the connection limit
        self._scripts = Scripts(self._redis, keys)
        self.session = SessionKeys(session, self._signer) if session is not None else None
        self._submitter = Submitter(
            self._redis, self._scripts, keys, self._signer, self._reconnector,
            client_id=self.client_id, queue=queue, timeout_s=timeout, max_attempts=max_attempts,
            forward_output=forward_output, session=session or "", retry_on=retry_on_names(retry_on))
        self._channel = keys.channel(self.client_id)
        self._delivery = Delivery(self._signer, self.client_id, callback=callback, error_callback=error_callback,
                                  progress_callback=progress_callback, forward_output=forward_output)
        # The unfinished jobs and their lock, which the delivery owns: the submitting side adds to them.
        self._cond, self._pending = self._delivery.cond, self._delivery.pending
        self._outcomes = OutcomeList(self._redis, self._scripts, keys, self.client_id)
        self._losses = LossWatch(self._redis, keys, self._submitter, self._delivery, self.client_id)
        self._cancelling = Cancelling(self._redis, self._scripts, self._reconnector, self._delivery,
                                      self.client_id, self.session)
        # Outcomes a session already held when we submitted (see submit.lua), for this
        # thread to deliver: callbacks run on it only.
        self._attached: collections.deque[Attached] = collections.deque()

    # -- submitting ----------------------------------------------------------

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """Queue ``func(*args, **kwargs)``; returns its job id once the job is durable in Redis.

        In a session, a job the session already holds (same content and
        occurrence) is not queued again: its id is returned and its outcome
        delivered (at once if it finished).
        """
        return self.submit_prepared(self._submitter.prepare_function(func),
                                    [self._submitter.pickle_args(func, args, kwargs)])[0]

    def submit_keyed(self, key: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """As :meth:`submit`, but the job's key in the session is ``key`` instead of its content."""
        if self.session is None:
            raise ValueError("submit_keyed needs a session: ClientThread(..., session=NAME)")
        return self.submit_prepared(self._submitter.prepare_function(func),
                                    [self._submitter.pickle_args(func, args, kwargs)],
                                    ids=[self.session.keyed_id(key)])[0]

    def submit_prepared(self, prepared: tuple[bytes, str, str], pickled_args: list[bytes],
                        ids: list[str] | None = None, finished: dict[str, Decoded] | None = None) -> list[str]:
        """Queue many calls of one already-pickled function in pipelined batches (used by ``Executor.map``).

        If a batch fails, the error is raised and no later batch is sent; the
        jobs of the batches before it stay queued and their outcomes are
        delivered as usual (the error's note says how many).
        """
        shared = self._submitter.shared_records(prepared)
        if ids is None and self.session is not None:
            ids = self.session.content_ids(shared.fn_digest, pickled_args)
        jobs = self._submitter.seal_jobs(shared, pickled_args, ids)
        self._submit(shared, jobs, finished)
        return [job_id for job_id, _ in jobs]

    def _submit(self, shared: SharedRecords, jobs: list[tuple[str, bytes]],
                finished_to: dict[str, Decoded] | None = None) -> None:
        """Submit ``jobs`` batch by batch, each tracked from before it is sent (an outcome may come
        before the submit returns) and kept for resubmission once durable; only the jobs of a batch
        that failed, and after it, are forgotten."""
        queued = 0
        for batch in job_batches(jobs):
            with self._cond:
                for job_id, _ in batch:
                    self._pending[job_id] = None
                checks = self._losses.checks
            try:
                attached = self._submitter.submit(shared, batch)
            except BaseException as exc:
                with self._cond:
                    for job_id, _ in batch:
                        self._pending.pop(job_id, None)
                    self._cond.notify_all()
                if queued:
                    exc.add_note(f"{queued} of {len(jobs)} jobs were queued before this error (their outcomes "
                                 f"are delivered as usual); the other {len(jobs) - queued} were not")
                raise
            queued += len(batch)
            with self._cond:
                for job_id, args in batch:
                    if job_id in self._pending:  # else its outcome came already
                        self._pending[job_id] = Resubmission(shared, args)
                if self._losses.checks != checks:  # a check began while this batch was in flight: it missed it
                    self._losses.suspected = True
                finished = [a for a in attached if a.kind]  # in an earlier run
                if finished_to is None:
                    self._attached.extend(finished)  # delivered by the results thread, as callbacks
            if finished_to is not None:
                self._delivery.hand_over(finished, finished_to)
            elif finished:
                self._wake_results_thread()

    def _wake_results_thread(self) -> None:
        """A message on our own channel: the results thread looks at _attached and the stop request now."""
        try:
            self._redis.spublish(self._channel, b"W")
        except Exception as exc:  # it looks at both twice a second anyway
            log.debug("client %s: could not wake its results thread: %s", self.client_id, describe(exc))

    @property
    def submitter(self) -> Submitter:
        return self._submitter

    @property
    def done_count(self) -> int:
        """Jobs whose result was delivered."""
        return self._delivery.done_count

    @property
    def failed_count(self) -> int:
        """Jobs whose error was delivered."""
        return self._delivery.failed_count

    # -- cancelling ------------------------------------------------------------

    def cancel(self, jobid: str) -> bool:
        """Cancel a job: a pending one never runs, a running one is stopped (its processes gone within
        seconds; the worker goes on). False if it had already finished (or is unknown).

        Its outcome is one error callback with reason ``cancelled`` (``wait()``
        does not raise it: the caller asked for it). A cancelled job is never retried.
        """
        return self.cancel_many([jobid], stop_running=True)[jobid] in ("cancelled", "stopping")

    def cancel_many(self, job_ids: list[str], *, stop_running: bool) -> dict[str, str]:
        """Cancel jobs in one round trip per batch; per job 'cancelled', 'stopping', or the state it was
        left in (``stop_running=False`` leaves running jobs alone: 'running')."""
        return self._cancelling.many(job_ids, stop_running=stop_running)

    def _cancel_outstanding(self) -> None:
        """Leaving by an exception (see :meth:`Cancelling.outstanding`)."""
        self._cancelling.outstanding()

    # -- waiting and stopping ------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Jobs submitted whose outcome has not been delivered yet."""
        with self._cond:
            return len(self._pending)

    def wait(self, timeout: float | None = None, *, progress: bool | str = False) -> None:
        """Return when every job submitted so far has finished; TimeoutError if ``timeout`` passes first.

        Without an error_callback, raise the first RemoteError seen (once).
        ``progress=True`` shows a live bar on a terminal (``"always"``: anywhere).
        """
        if not self.is_alive() and not self._stop_event.is_set():
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progressbar.wanted(progress):
            bar = progressbar.ProgressBar(self._redis, self._keys, self.outstanding)
            base = (self.done_count, self.failed_count)
        try:
            with self._cond:
                since = self.lasting.count
                while self._pending:
                    self.lasting.raise_if_stuck(since)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"{len(self._pending)} job(s) still unfinished after {timeout}s")
                    self._cond.wait(min(remaining, 0.2) if remaining is not None else 0.2)
                    if bar is not None:
                        bar.update(self.done_count - base[0], self.failed_count - base[1])
                error = self._delivery.take_first_error()
        finally:
            if bar is not None:
                bar.update(self.done_count - base[0], self.failed_count - base[1])
                bar.close()
        if error is not None:
            raise error

    def stop(self) -> None:
        """Stop the results thread and close connections; undelivered outcomes stay in Redis.

        Delivered outcomes are trimmed on the way out; a client with every
        outcome delivered leaves no list or counter behind.
        """
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self._wake_results_thread()  # it may be waiting for a message: no need to let it time out
            self.join()
        self._submitter.close()
        self._redis.close()

    def __enter__(self) -> "ClientThread":
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leaving normally waits for every job; leaving by an exception (Ctrl-C included) cancels the
        outstanding ones, unless this client is in a session (then they keep running)."""
        try:
            if exc_type is None:
                self.wait()
            else:
                self._cancel_outstanding()
        finally:
            self.stop()

    # -- the results thread --------------------------------------------------

    def run(self) -> None:
        subscription: Subscription | None = None
        last_drain = 0.0
        while not self._stop_event.is_set():
            try:
                if subscription is None:
                    subscription = Subscription(self._redis, self._channel)
                    self._drain(look_for_restart=True)  # whatever arrived while we were not listening
                    last_drain = time.monotonic()
                wait_s = self._outcomes.wait_s(0.5)
                if self._attached:  # its wake-up may have come before we subscribed
                    wait_s = 0.0
                data = subscription.next(wait_s)
                needs_drain = False
                while data is not None:
                    needs_drain = self._on_published(data) or needs_drain
                    # Messages already read are taken at the next turn without a system call; only to read
                    # a drain's worth of large outcomes' notices first is the socket looked at again now.
                    # (Looking each time cost a lone job a poll() and a hand-over of the GIL to the thread
                    # its callback just woke.)
                    data = subscription.next(0.0) if needs_drain else None
                self._deliver_attached()
                periodic = bool(self.outstanding) and time.monotonic() - last_drain > SAFETY_POLL_S
                if needs_drain or periodic:
                    self._drain(look_for_restart=periodic)
                    last_drain = time.monotonic()
                elif self._outcomes.trim_is_due():
                    if not self._outcomes.trim():
                        self._drain()  # the list is not what we numbered: read it afresh
                        last_drain = time.monotonic()
                if self._losses.suspected:
                    self._losses.resubmit_lost(self._drain)
                    last_drain = time.monotonic()
                self._reconnector.succeeded()
                self.lasting.cleared()
            except Exception as exc:
                if not is_transient(exc):
                    with self._cond:
                        new = self.lasting.met(exc)
                        self._cond.notify_all()  # a waiter may have to raise it now
                    if new:  # once, not at every retry
                        log.exception("client %s: unexpected error in the results thread", self.client_id)
                if subscription is not None:
                    subscription.close()
                subscription = None
                self._losses.suspect()  # the server may have restarted from older data
                self._reconnector.failed(exc)
        if subscription is not None:
            subscription.close()
            self._clean_up()

    def _on_published(self, data: bytes) -> bool:
        """Deliver a published outcome; True if it was too big to publish and must be read from the list."""
        if data.startswith(b"P\n"):
            self._delivery.progress(data)
            return False
        if data == b"W":
            self._deliver_attached()
            return False
        entry = self._outcomes.parse(data)
        if entry.kind == b"big":
            return True
        self._outcomes.consumed(entry)
        self._deliver_entry(entry)
        return False

    def _deliver_attached(self) -> None:
        """Outcomes a session kept for jobs we submitted again (see :meth:`_submit`)."""
        while self._attached:
            found = self._attached.popleft()
            self._delivery.deliver(found.job_id, found.generation, found.kind, found.body)

    def _drain(self, *, look_for_restart: bool = False) -> None:
        """Deliver every outcome in our list (see OutcomeList.drain); with ``look_for_restart`` (on
        (re)subscribing and on the periodic safety poll: INFO is not free) note the server's run_id."""
        run_id = self._outcomes.drain(self._deliver_entry, look_for_restart=look_for_restart)
        if look_for_restart:
            self._losses.note_run_id(run_id)

    def _deliver_entry(self, entry: OutcomeEntry) -> None:
        if entry.job_id is not None:
            self._delivery.deliver(entry.job_id, entry.generation, entry.kind, entry.body)

    def _clean_up(self) -> None:
        """On stop: trim what was delivered; with nothing left in the list, delete it and its counter.

        Best effort, once: what stays expires with its TTL.
        """
        try:
            self._outcomes.trim(drop_if_empty=True)
        except Exception as exc:
            log.debug("client %s: could not trim its outcomes on stop: %s", self.client_id, describe(exc))
