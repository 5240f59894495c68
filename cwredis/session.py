"""Sessions: a named, durable set of jobs that any client may attach to again.

Inside a session every job has a *key*: its content (the function's digest
and its pickled arguments) and its occurrence number among identical
submissions of this attachment, or a key the caller gives
(``submit_keyed``). The job's id is derived from the session's name and the
key (:meth:`cwredis.signing.Signer.session_hasher`, keyed by the secret), so a
rerun of the same script computes the same ids, and submit.lua finds the
jobs it already holds: a finished one comes back with its kept outcome, a
running one gets this client added to those its outcome goes to. Nothing is
computed twice; where the pickled bytes differ between runs, the job simply
runs again (never a wrong result).
"""

from __future__ import annotations

import threading

from .signing import Signer

#: Longest session name accepted (it is part of Redis keys).
MAX_NAME = 200


def check_name(name: str) -> str:
    """A usable session name, or ValueError saying why not."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ValueError(f"a session name is 1 to {MAX_NAME} characters, not {name!r}")
    if any(c.isspace() or not c.isprintable() or c in ",:" for c in name):
        raise ValueError(f"invalid session name {name!r}: no spaces, commas, colons or control characters")
    return name


class SessionKeys:
    """The job ids of one attachment to a session (thread-safe: map's batches may come from any thread)."""

    def __init__(self, name: str, signer: Signer) -> None:
        self.name = check_name(name)
        self._signer = signer
        # Occurrences so far per content, so that identical submissions (a Monte Carlo's
        # sample() 100 times) are 100 jobs, and a rerun numbers them the same way.
        self._seen: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._content = signer.session_hasher(self.name, b"c")
        self._keyed = signer.session_hasher(self.name, b"k")

    def content_ids(self, fn_digest: str, pickled_args: list[bytes]) -> list[str]:
        """The ids of jobs calling the function ``fn_digest`` with each of ``pickled_args``, in order.

        One keyed hash of the content per job; its n-th repetition (n > 0)
        hashes that again with n, so each is a job of its own.
        """
        ids = []
        head = self._content.copy()
        head.update(fn_digest.encode() + b"\0")
        with self._lock:
            for args in pickled_args:
                h = head.copy()
                h.update(args)
                content = h.digest()
                n = self._seen.get(content, 0)
                self._seen[content] = n + 1
                if n:
                    h.update(b"#%d" % n)
                ids.append(h.hexdigest())
        return ids

    def keyed_id(self, key: str) -> str:
        """The id of the job with the caller's ``key`` (``submit_keyed``)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"a job key is a non-empty string, not {key!r}")
        h = self._keyed.copy()
        h.update(key.encode())
        return h.hexdigest()
