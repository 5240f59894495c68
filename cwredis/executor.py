"""Executor: the ``concurrent.futures`` face of a ClientThread.

Its futures stay *pending* until the job's outcome arrives (a queued job may
still be cancelled), so ``Future.cancel()`` keeps the ``concurrent.futures``
meaning: True, and the job never runs, if it had not started; False
otherwise. A job cancelled from elsewhere (``cw-admin cancel``) cancels its
future. Leaving the ``with`` block by an exception (Ctrl-C included) cancels
every outstanding job, unless the executor is in a session.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import config, progressbar
from .client import ClientThread
from .outcomes import Decoded
from .errors import RemoteError
from .keys import DEFAULT_KEYS, Keys
from .submitter import chunked

log = logging.getLogger("cwredis.executor")


class JobFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A job's future; :meth:`cancel` asks Redis first (see the module docstring)."""

    def __init__(self, executor: "Executor", job_id: str) -> None:
        super().__init__()
        self._executor = executor
        self.job_id = job_id

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self._executor.client.cancel_many([self.job_id], stop_running=False)[self.job_id] != "cancelled":
            return False  # started (or finished): it runs to its end
        return self.mark_cancelled()

    def mark_cancelled(self) -> bool:
        """Cancel the future itself and tell its waiters (``wait``/``as_completed`` count it done only then).

        Under the future's own (re-entrant) lock: the caller's thread and the
        results thread (the job's 'cancelled' outcome) may both get here.
        """
        with self._condition:
            if self.done():
                return self.cancelled()
            super().cancel()
            self.set_running_or_notify_cancel()  # CANCELLED -> CANCELLED_AND_NOTIFIED, as executors do
        return True


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Runs on the worker: one job computing several map items (``chunksize > 1``)."""
    return [fn(*args) for args in chunk]


Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]


def _map_batches(pickle_args: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], bytes],
                 fn: Callable[..., Any], items: Iterator[tuple[Any, ...]],
                 chunksize: int) -> Iterator[tuple[Callable[..., Any], Calls, list[bytes], int]]:
    """Map's submits: (function, calls, their pickled arguments, 1 if chunks else 0), pickled as they are
    drawn from ``items``; a batch ends at SUBMIT_BATCH jobs or once its arguments reach
    SUBMIT_BATCH_BYTES, so large arguments are never all pickled before the first is submitted."""
    func, is_chunk = (fn, 0) if chunksize == 1 else (_run_chunk, 1)
    limit = config.SUBMIT_BATCH if chunksize == 1 else max(1, config.SUBMIT_BATCH // chunksize)
    calls: Calls = []
    pickled: list[bytes] = []
    size = 0
    source: Iterable[Any] = items if chunksize == 1 else chunked(items, chunksize)
    for item in source:
        call: tuple[tuple[Any, ...], dict[str, Any]] = (item, {}) if chunksize == 1 else ((fn, item), {})
        calls.append(call)
        pickled.append(pickle_args(func, *call))
        size += len(pickled[-1])
        if len(calls) == limit or size >= config.SUBMIT_BATCH_BYTES:
            yield func, calls, pickled, is_chunk
            calls, pickled, size = [], [], 0
    if calls:
        yield func, calls, pickled, is_chunk


class Executor(concurrent.futures.Executor):
    """Runs calls on cwredis workers; futures resolve from a ClientThread's callbacks."""

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        queue: str = config.DEFAULT_QUEUE,
        timeout: float | None = None,
        max_attempts: int = config.DEFAULT_MAX_ATTEMPTS,
        retry_on: Sequence[type[BaseException]] = (),
        secret: bytes | str | None = None,
        insecure: bool = False,
        session: str | None = None,
        keys: Keys = DEFAULT_KEYS,
    ) -> None:
        # Job id -> its futures (more than one only when a session's key is submitted twice).
        self._futures: dict[str, list[JobFuture]] = {}
        self._lock = threading.Lock()
        self._client = ClientThread(
            self._on_result, url, host=host, error_callback=self._on_error, queue=queue,
            timeout=timeout, max_attempts=max_attempts, retry_on=retry_on, secret=secret, insecure=insecure,
            session=session,
            keys=keys)
        self._client.start()
        self._shutdown = False

    @property
    def client(self) -> ClientThread:
        return self._client

    def _on_result(self, job_id: str, result: Any) -> None:
        with self._lock:
            futures = self._futures.pop(job_id, [])
        for future in futures:
            if not future.done():  # a cancelled one stays cancelled
                future.set_result(result)

    def _on_error(self, job_id: str, error: RemoteError) -> None:
        with self._lock:
            futures = self._futures.pop(job_id, [])
        for future in futures:
            if future.done():
                continue
            if error.reason == "cancelled":
                future.mark_cancelled()  # cancelled elsewhere: the future says so
            else:
                future.set_exception(error)

    def _submit_many(self, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                     key: str | None = None, *, resuming: bool = False,
                     pickled: list[bytes] | None = None) -> list[Any]:
        """A future per call; with ``resuming`` (map), a call whose job a session already finished gets
        its decoded outcome instead (no future: what makes resuming a sweep fast). ``pickled``: the
        calls' arguments, already pickled (map measures their size before it submits)."""
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        submitter = self._client.submitter
        prepared = submitter.prepare_function(fn)
        if pickled is None:
            pickled = [submitter.pickle_args(fn, args, kwargs) for args, kwargs in calls]
        # The futures must exist before an outcome can arrive: hold the lock
        # across the submit so the callbacks wait for _track.
        session = self._client.session
        ids = [session.keyed_id(key)] if key is not None and session is not None else None
        finished: dict[str, Decoded] | None = {} if resuming and session is not None else None
        with self._lock:
            job_ids = self._client.submit_prepared(prepared, pickled, ids, finished)
            futures: list[Any] = []
            for job_id in job_ids:
                if finished and (decoded := finished.get(job_id)) is not None:
                    futures.append(decoded)
                    continue
                future = JobFuture(self, job_id)
                self._futures.setdefault(job_id, []).append(future)
                futures.append(future)
        return futures

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        """Queue ``fn(*args, **kwargs)``; the future is returned once the job is durable."""
        return self._submit_many(fn, [(args, kwargs)])[0]

    def submit_keyed(self, key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> JobFuture:
        """As :meth:`submit`, with ``key`` as the job's key in the session (see ClientThread.submit_keyed)."""
        if self._client.session is None:
            raise ValueError("submit_keyed needs a session: Executor(..., session=NAME)")
        return self._submit_many(fn, [(args, kwargs)], key=key)[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, progress: bool | str = False, return_exceptions: bool = False) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``, submitting lazily in pipelined batches.

        At most ``config.MAP_WINDOW`` jobs are submitted ahead of what the
        caller has consumed, so mapping over a huge generator keeps memory
        bounded. The first window is submitted before this returns.
        A failed element raises its RemoteError when iteration reaches it; with
        ``return_exceptions=True`` it is yielded in the element's place instead
        and iteration goes on (with ``chunksize > 1``, once per element of the
        failed chunk).
        ``progress=True`` shows a live bar on a terminal (``"always"``: anywhere).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        batches = _map_batches(self._client.submitter.pickle_args, fn, zip(*iterables), chunksize)
        window = max(1, config.MAP_WINDOW // chunksize)
        deadline = None if timeout is None else time.monotonic() + timeout
        # (JobFuture, or Decoded for a session's job finished earlier; its item count if a chunk else 0;
        # the size of its pickled arguments)
        queued: collections.deque[tuple[Any, int, int]] = collections.deque()
        queued_bytes = [0]  # of the jobs in `queued`: at most MAP_WINDOW_BYTES + one batch
        by_bytes = [False]  # the last refill stopped at the byte window (else at the job window)

        counts = [0, 0]  # items done, failed (chunks count their items)
        bar = None
        if progressbar.wanted(progress):
            sizes = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
            bar = progressbar.ProgressBar(self._client._redis, self._client._keys,
                                          min(sizes) if len(sizes) == len(iterables) else None)

        def count(items: int) -> Callable[[concurrent.futures.Future[Any]], None]:
            def done(future: concurrent.futures.Future[Any]) -> None:
                counts[1 if future.exception() is not None else 0] += items
            return done

        def refill() -> None:
            while len(queued) < window and queued_bytes[0] < config.MAP_WINDOW_BYTES:
                batch = next(batches, None)
                if batch is None:
                    return
                func, batch_calls, pickled, is_chunk = batch
                futures = self._submit_many(func, batch_calls, resuming=True, pickled=pickled)
                for future, (call_args, _), args in zip(futures, batch_calls, pickled):
                    chunk_items = len(call_args[1]) if is_chunk else 0
                    if isinstance(future, Decoded):  # a session's job finished in an earlier run
                        counts[0 if future.ok else 1] += chunk_items or 1
                    elif bar is not None:
                        future.add_done_callback(count(chunk_items or 1))
                    queued.append((future, chunk_items, len(args)))
                    queued_bytes[0] += len(args)
            by_bytes[0] = queued_bytes[0] >= config.MAP_WINDOW_BYTES

        def result_of(future: Any) -> Any:
            if isinstance(future, Decoded):
                if future.ok:
                    return future.value
                raise future.value
            step = 0.2 if bar is not None else 1.0
            since = self._client.lasting.count
            while True:  # in steps: the bar moves, and a results thread stuck on a lasting error raises here
                self._client.lasting.raise_if_stuck(since)
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    return future.result(step if remaining is None else max(0.0, min(remaining, step)))
                except concurrent.futures.TimeoutError:
                    if remaining is not None and remaining <= step:
                        raise
                if bar is not None:
                    bar.update(*counts)

        refill()

        def results() -> Iterator[Any]:
            try:
                while queued:
                    future, chunk_items, size = queued.popleft()
                    queued_bytes[0] -= size
                    try:
                        value = result_of(future)
                    except RemoteError as error:
                        if not return_exceptions:
                            raise
                        value = [error] * chunk_items if chunk_items else error
                    if bar is not None:
                        bar.update(*counts)
                    # Refill once the window that stopped the last refill is half empty: submits go in
                    # large batches, not one per item consumed.
                    if (queued_bytes[0] < config.MAP_WINDOW_BYTES // 2 if by_bytes[0]
                            else len(queued) < window // 2):
                        refill()
                    if chunk_items:
                        yield from value
                    else:
                        yield value
            finally:
                if bar is not None:
                    bar.close()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ``concurrent.futures``: with ``cancel_futures``, the jobs that have not started are cancelled
        (never run); then wait for the rest (if ``wait``) and stop the client thread."""
        self._shutdown = True
        if cancel_futures:
            self._cancel(stop_running=False)
        if wait:
            with self._lock:
                pending = [f for futures in self._futures.values() for f in futures]
            concurrent.futures.wait(pending)
        self._client.stop()

    def _cancel(self, *, stop_running: bool) -> None:
        """Cancel the outstanding jobs (also running ones, with ``stop_running``) and their futures."""
        with self._lock:
            outstanding = {job_id: list(futures) for job_id, futures in self._futures.items()}
        words = self._client.cancel_many(list(outstanding), stop_running=stop_running)
        for job_id, word in words.items():
            if word in ("cancelled", "stopping"):
                for future in outstanding[job_id]:
                    future.mark_cancelled()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leaving normally waits for every future; leaving by an exception cancels the outstanding jobs
        (in a session they keep running instead, and we say how to collect or cancel them)."""
        if exc_type is not None:
            if self._client.session is not None:
                self._client._cancel_outstanding()  # prints how to collect or cancel them
            else:
                try:
                    self._cancel(stop_running=True)
                except Exception as error:  # leaving anyway: the exception that brought us here goes on
                    log.warning("could not cancel the outstanding jobs on the way out: %s", error)
        self.shutdown(wait=exc_type is None)
