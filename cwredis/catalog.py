"""A worker's cache of the shared, immutable records jobs point at.

Specs and blobs are content-addressed, so a cached copy never goes stale; a
worker fetches each once (one pipelined round trip for all misses of a
claimed batch) and verifies each once: a blob's own signature, and for
blobs and specs alike that the record is the one its digest names (digests
are keyed by the secret and signed into every job: :mod:`cwredis.signing`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import redis

from . import job
from .keys import Keys
from .serialization import ENV, FUNCTION
from .signing import Corrupt, Rejected, Signer

#: Entries kept per kind.
CACHE_SIZE = 512


class _Lru(OrderedDict[str, Any]):
    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


class Catalog:
    """Specs, functions and environments by digest; verified records only."""

    def __init__(self, client: redis.Redis | None, keys: Keys, signer: Signer) -> None:
        """``client``: where :meth:`fetch` reads; None for a caller that fetches itself and calls :meth:`add`."""
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
        assert self._redis is not None, "a catalog without a client is filled with add()"
        pipe = self._redis.pipeline(transaction=False)
        for digest in specs:
            pipe.hgetall(self._keys.spec(digest))
        for digest in blobs:
            pipe.hmget(self._keys.blob(digest), job.BLOB_DATA, job.BLOB_NAME)
        replies = pipe.execute()
        self.add(zip(specs, replies[: len(specs)]), zip(blobs, replies[len(specs):]))

    def missing(self, spec_digests: Iterable[str], blob_digests: Iterable[str]) -> tuple[list[str], list[str]]:
        """Of these specs and blobs, those not cached (for a caller that fetches them itself)."""
        return ([d for d in dict.fromkeys(spec_digests) if d not in self._specs],
                [d for d in dict.fromkeys(blob_digests) if d and d not in self._blobs])

    def add(self, specs: Iterable[tuple[str, Mapping[bytes | str, bytes | str]]],
            blobs: Iterable[tuple[str, Sequence[bytes | None]]]) -> None:
        """Cache fetched records: (digest, the spec hash's fields), (digest, [data, name]); empty ones are
        missing. Nothing is trusted here: each is verified when it is asked for."""
        for digest, fields in specs:
            if fields:
                self._specs.put(digest, self._verified_spec(digest, fields))
        for digest, (data, name) in blobs:
            if data is not None:
                self._blobs.put(digest, data)
                if name is not None:
                    self._names[digest] = name.decode(errors="replace")

    def _verified_spec(self, digest: str, fields: Mapping[bytes | str, bytes | str]) -> tuple[job.Spec | None, bool]:
        """The decoded spec (None if garbage), and whether it is the record ``digest`` names."""
        named = {job.text(k) or "": job.text(v) or "" for k, v in fields.items()}
        verified = self._signer.secret is None or self._signer.spec_digest(named) == digest
        try:
            return job.Spec.from_hash(fields), verified
        except ValueError:
            return None, verified  # garbage spec: the job fails corrupt

    def spec(self, digest: str) -> job.Spec | None:
        """The spec a digest names (None: missing or garbage); Rejected if the record was swapped."""
        spec, verified = self._specs.get(digest, (None, True))
        if not verified:
            raise Rejected("the job's spec (client, queue, limits) does not match the digest it was signed with")
        return spec

    def routing_spec(self, digest: str) -> job.Spec | None:
        """The spec record under a digest, verified or not: where a job's rejection goes."""
        return self._specs.get(digest, (None, True))[0]

    def env_digests(self, spec_digests: Iterable[str]) -> list[str]:
        """The environments the cached, untampered specs among ``spec_digests`` point at."""
        specs = (self._specs.get(d, (None, False)) for d in spec_digests)
        return [spec.env for spec, verified in specs if spec is not None and verified]

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
        self._signer.check_digest(what, sealed, digest)
        data = self._signer.open(kind, sealed)
        self._verified.put(kind.decode() + digest, data)
        return data
