"""Executor: the ``concurrent.futures`` face of a ClientThread."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import config, progressbar
from .client import ClientThread
from .errors import RemoteError
from .keys import DEFAULT_KEYS, Keys
from .submitter import chunked


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Runs on the worker: one job computing several map items (``chunksize > 1``)."""
    return [fn(*args) for args in chunk]


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
        keys: Keys = DEFAULT_KEYS,
    ) -> None:
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._client = ClientThread(
            self._on_result, url, host=host, error_callback=self._on_error, queue=queue,
            timeout=timeout, max_attempts=max_attempts, retry_on=retry_on, secret=secret, insecure=insecure,
            keys=keys)
        self._client.start()
        self._shutdown = False

    @property
    def client(self) -> ClientThread:
        return self._client

    def _on_result(self, job_id: str, result: Any) -> None:
        with self._lock:
            future = self._futures.pop(job_id, None)
        if future is not None:
            future.set_result(result)

    def _on_error(self, job_id: str, error: RemoteError) -> None:
        with self._lock:
            future = self._futures.pop(job_id, None)
        if future is not None:
            future.set_exception(error)

    def _submit_many(self, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
                     ) -> list[concurrent.futures.Future[Any]]:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        submitter = self._client.submitter
        prepared = submitter.prepare_function(fn)
        pickled = [submitter.pickle_args(fn, args, kwargs) for args, kwargs in calls]
        # The futures must exist before an outcome can arrive: hold the lock
        # across the submit so the callbacks wait for _track.
        with self._lock:
            job_ids = self._client.submit_prepared(prepared, pickled)
            futures = []
            for job_id in job_ids:
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                future.set_running_or_notify_cancel()  # queued jobs cannot be cancelled
                self._futures[job_id] = future
                futures.append(future)
        return futures

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(*args, **kwargs)``; the future is returned once the job is durable."""
        return self._submit_many(fn, [(args, kwargs)])[0]

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
        calls = zip(*iterables)
        if chunksize == 1:
            batches: Iterator[tuple[Callable[..., Any], list[tuple[tuple[Any, ...], dict[str, Any]]], int]] = (
                (fn, [(args, {}) for args in batch], 0) for batch in chunked(calls, config.SUBMIT_BATCH))
        else:
            batches = (
                (_run_chunk, [((fn, chunk), {}) for chunk in group], 1)
                for group in chunked(chunked(calls, chunksize), max(1, config.SUBMIT_BATCH // chunksize)))
        window = max(1, config.MAP_WINDOW // chunksize)
        deadline = None if timeout is None else time.monotonic() + timeout
        # (future, its item count if a chunk else 0)
        queued: collections.deque[tuple[concurrent.futures.Future[Any], int]] = collections.deque()

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
            while len(queued) < window:
                batch = next(batches, None)
                if batch is None:
                    return
                func, batch_calls, is_chunk = batch
                for future, (call_args, _) in zip(self._submit_many(func, batch_calls), batch_calls):
                    chunk_items = len(call_args[1]) if is_chunk else 0
                    if bar is not None:
                        future.add_done_callback(count(chunk_items or 1))
                    queued.append((future, chunk_items))

        def result_of(future: concurrent.futures.Future[Any]) -> Any:
            while bar is not None and not future.done():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                concurrent.futures.wait([future], timeout=0.2)
                bar.update(*counts)
            remaining = None if deadline is None else deadline - time.monotonic()
            return future.result(remaining)

        refill()

        def results() -> Iterator[Any]:
            try:
                while queued:
                    future, chunk_items = queued.popleft()
                    try:
                        value = result_of(future)
                    except RemoteError as error:
                        if not return_exceptions:
                            raise
                        value = [error] * chunk_items if chunk_items else error
                    if bar is not None:
                        bar.update(*counts)
                    if len(queued) < window // 2:
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
        """Wait for every future (if ``wait``), then stop the client thread."""
        self._shutdown = True
        if wait:
            with self._lock:
                pending = list(self._futures.values())
            concurrent.futures.wait(pending)
        self._client.stop()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.shutdown(wait=exc_type is None)
