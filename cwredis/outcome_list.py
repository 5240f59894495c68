"""A client's outcome list in Redis: reading it, and trimming exactly what was delivered.

Outcomes wait durably in the client's list (``keys.results``), numbered by a
per-client sequence; complete.lua also publishes each. Only the client trims
and workers only append, so numbers map to positions: the entries delivered
from pub/sub are trimmed once they form a prefix, and trim_results.lua checks
each entry it removes against the header the client read, so numbers reused
after a server lost writes never cost an undelivered outcome. A *drain* reads
the list itself (after a (re)subscription, for an outcome too big to
publish, or on the safety poll) and trims what it read.

The ClientThread's results thread is the only user (no locking here).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

import redis

from . import config, heap
from .keys import Keys
from .scripts import Scripts
from .signing import VIEW_BYTES, sliced

log = logging.getLogger("cwredis.client")

#: Delivered outcomes are trimmed from the list in batches: when this many
#: form a prefix, or the oldest has waited TRIM_DELAY_S. A trim is a round
#: trip; one per outcome would run beside the next submit, on the latency path.
TRIM_BATCH = 256
TRIM_DELAY_S = 0.1

#: An undecodable entry is recognised, when it is trimmed, by this many of its first bytes.
UNDECODABLE_HEADER_BYTES = 64
#: An entry's header (sequence number, job id, generation, kind) is within its first this many bytes.
_HEAD_MAX = 256


class OutcomeEntry(NamedTuple):
    """An entry of a client's outcome list (or its published copy), as complete.lua writes it."""

    seq: int
    header: bytes  # b"seq\\njob_id\\ngeneration\\n": what trim_results.lua checks before removing the entry
    job_id: str | None  # None: undecodable
    generation: int
    kind: bytes  # b"ok", b"err", b"big" (published header only: read it from the list), b"ref" (body in a key)
    body: bytes | memoryview  # a large result's a view into the entry, not a copy (signing.sliced)


class OutcomeList:
    """One client's outcome list: entries numbered ``trimmed + 1, trimmed + 2, ...``; ``consumed`` holds
    the numbers (and headers) delivered from pub/sub, trimmed once they form a prefix."""

    def __init__(self, client: redis.Redis, scripts: Scripts, keys: Keys, client_id: str) -> None:
        self._redis = client
        self._scripts = scripts
        self._client_id = client_id
        self._key = keys.results(client_id)
        self._seq_key = keys.result_seq(client_id)
        self._trimmed = 0
        self._consumed: dict[int, bytes] = {}
        self._trim_due = 0.0  # when the delivered-but-untrimmed entries must go (0: none waiting)

    def parse(self, raw: bytes) -> OutcomeEntry:
        """An outcome entry, or one with job_id None (dropped with a warning) if undecodable."""
        try:
            if len(raw) >= VIEW_BYTES:
                heap.keep_freed_memory()  # this client receives large results
            raw_seq, raw_id, raw_gen, kind, _ = raw[:_HEAD_MAX].split(b"\n", 4)
            head_end = len(raw_seq) + len(raw_id) + len(raw_gen) + 3
            return OutcomeEntry(int(raw_seq), raw[:head_end], raw_id.decode(), int(raw_gen), kind,
                                sliced(raw, head_end + len(kind) + 1))
        except ValueError:
            log.warning("client %s: dropping an undecodable outcome entry %r", self._client_id, raw[:80])
            return OutcomeEntry(0, raw[:UNDECODABLE_HEADER_BYTES], None, 0, b"", b"")

    def consumed(self, entry: OutcomeEntry) -> None:
        """A published entry was delivered: trim it with the next batch."""
        if entry.seq > self._trimmed:
            if not self._consumed:
                self._trim_due = time.monotonic() + TRIM_DELAY_S
            self._consumed[entry.seq] = entry.header

    def wait_s(self, longest: float) -> float:
        """How long the results thread may wait for a message before a trim is due."""
        return longest if not self._trim_due else max(0.0, min(longest, self._trim_due - time.monotonic()))

    def trim_is_due(self) -> bool:
        return bool(self._consumed) and (len(self._consumed) >= TRIM_BATCH or time.monotonic() >= self._trim_due)

    def trim(self, *, drop_if_empty: bool = False) -> bool:
        """Trim the head of the list that has been delivered: entries trimmed+1 ... without a gap.

        False if the list did not hold what we delivered there (the server
        lost writes and reused numbers): nothing of it was removed past the
        first mismatch, and the caller must :meth:`drain` afresh.
        """
        headers: list[bytes] = []
        while (header := self._consumed.pop(self._trimmed + len(headers) + 1, None)) is not None:
            headers.append(header)
        in_step = True
        if headers or drop_if_empty:
            removed = self._scripts.trim_results(self._redis, client_id=self._client_id, headers=headers,
                                                 drop_if_empty=drop_if_empty)
            self._trimmed += removed
            in_step = removed == len(headers)
        # Left with a gap (an entry not seen on pub/sub yet): look again later, not in a busy loop.
        self._trim_due = time.monotonic() + TRIM_DELAY_S if self._consumed else 0.0
        return in_step

    def _with_staged_bodies(self, entries: list[OutcomeEntry]) -> list[OutcomeEntry]:
        """``entries`` with each ``ref`` entry's body read from the key it names (one MGET for all).

        complete.lua leaves a large body where the job process wrote it and
        appends an entry naming it (``kind\nkey``); trim_results.lua deletes
        the key with the entry. A body gone before it was read (its key
        outlived by the list, or tampered with) is delivered empty, which
        fails verification: the job's error says its outcome is corrupt.
        """
        refs = []
        for i, entry in enumerate(entries):
            if entry.kind == b"ref" and entry.job_id is not None:
                kind, _, key = bytes(entry.body).partition(b"\n")
                refs.append((i, kind, key))
        if not refs:
            return entries
        heap.keep_freed_memory()  # this client receives large results
        bodies: list[bytes | None] = self._redis.mget([key for _, _, key in refs])  # type: ignore[assignment]
        for (i, kind, key), body in zip(refs, bodies):
            if body is None:
                log.warning("client %s: the result of job %s was gone from %r before it was read",
                            self._client_id, entries[i].job_id, key)
            entries[i] = entries[i]._replace(kind=kind, body=body or b"")
        return entries

    def drain(self, deliver: Callable[[OutcomeEntry], None], *, look_for_restart: bool = False) -> Any:
        """Deliver every entry of the list and trim what was read; resynchronises the numbering.

        With ``look_for_restart``, the server's INFO ``run_id`` comes in the
        same round trip and is returned (else None).
        """
        run_id = None
        while True:
            pipe = self._redis.pipeline(transaction=True)  # counter, length and entries from one instant
            pipe.get(self._seq_key)
            pipe.llen(self._key)
            pipe.lrange(self._key, 0, config.RESULT_BATCH - 1)
            if look_for_restart:
                pipe.info("server")
            raw_seq, length, raw_entries, *server = pipe.execute()
            if server:
                run_id = server[0].get("run_id")
                look_for_restart = False
            entries = self._with_staged_bodies([self.parse(raw) for raw in raw_entries])
            for entry in entries:
                deliver(entry)
            removed = 0
            if entries:
                removed = self._scripts.trim_results(
                    self._redis, client_id=self._client_id, headers=[entry.header for entry in entries],
                    drop_if_empty=False)
            try:
                last_seq = int(raw_seq or 0)
            except ValueError:
                last_seq = 0
            # Entries are numbered consecutively up to the counter; we trimmed the first `removed`.
            self._trimmed = last_seq - (int(length) - removed)
            if removed == len(entries) and len(entries) < config.RESULT_BATCH:
                # Every number delivered before this drain is at most trimmed now, unless the
                # server lost writes since and numbers again from lower down: forget them all.
                self._consumed.clear()
                self._trim_due = 0.0
                return run_id
