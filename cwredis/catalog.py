"""A worker's cache of the shared, immutable records jobs point at.

Specs and blobs are content-addressed, so a cached copy never goes stale; a
worker fetches each once (one pipelined round trip for all misses of a
claimed batch) and verifies each blob's signature once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import redis

from . import job
from .keys import Keys
from .serialization import ENV, FUNCTION, Corrupt, Signer

#: Entries kept per kind.
CACHE_SIZE = 512


class _Lru(OrderedDict[str, Any]):
    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


class Catalog:
    """Specs, functions and environments by digest; verified blobs only."""

    def __init__(self, client: redis.Redis, keys: Keys, signer: Signer) -> None:
        self._redis = client
        self._keys = keys
        self._signer = signer
        self._specs: _Lru = _Lru()
        self._blobs: _Lru = _Lru()  # digest -> sealed blob (verified lazily per kind)
        self._names: dict[str, str] = {}
        self._verified: _Lru = _Lru()  # digest -> data whose signature checked out

    def fetch(self, spec_digests: Iterable[str], blob_digests: Iterable[str]) -> None:
        """Load every record not yet cached, in one round trip. Missing ones stay missing."""
        specs = [d for d in set(spec_digests) if d not in self._specs]
        blobs = [d for d in set(blob_digests) if d and d not in self._blobs]
        if not specs and not blobs:
            return
        pipe = self._redis.pipeline(transaction=False)
        for digest in specs:
            pipe.hgetall(self._keys.spec(digest))
        for digest in blobs:
            pipe.hmget(self._keys.blob(digest), job.BLOB_DATA, job.BLOB_NAME)
        replies = pipe.execute()
        for digest, fields in zip(specs, replies[: len(specs)]):
            if fields:
                try:
                    self._specs.put(digest, job.Spec.from_hash(fields))
                except ValueError:
                    pass  # garbage spec: the job fails corrupt
        for digest, (data, name) in zip(blobs, replies[len(specs):]):
            if data is not None:
                self._blobs.put(digest, data)
                if name is not None:
                    self._names[digest] = name.decode(errors="replace")

    def spec(self, digest: str) -> job.Spec | None:
        return self._specs.get(digest)

    def function(self, digest: str) -> bytes:
        """The verified pickle of a function; Rejected or Corrupt."""
        return self._open(FUNCTION, digest, "function")

    def env(self, digest: str) -> bytes:
        """The verified environment JSON; Rejected or Corrupt."""
        return self._open(ENV, digest, "environment")

    def function_name(self, digest: str) -> str:
        return self._names.get(digest, "?")

    def _open(self, kind: bytes, digest: str, what: str) -> bytes:
        data = self._verified.get(kind.decode() + digest)
        if data is not None:
            return data
        sealed = self._blobs.get(digest)
        if sealed is None:
            raise Corrupt(f"{what} record {digest} is missing")
        data = self._signer.open(kind, sealed)
        self._verified.put(kind.decode() + digest, data)
        return data
