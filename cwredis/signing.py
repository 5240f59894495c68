"""Signed envelopes: what ties a job, and each of its outcomes, to the secret.

Anyone who can write to Redis (every holder of its password) can put bytes
where a worker or client reads them, and a pickle is code. So every byte that
decides what runs, and every outcome, carries an HMAC-SHA256 tag (128 bits) made with
the shared secret, and nothing is unpickled before its tag checks out.

**A job** is bound as a whole, not blob by blob: its tag covers the job id,
the digest of its *spec* (submitting client, queue, timeout, max attempts,
output forwarding, and the digest of its environment), the digest of its
function, and its pickled arguments::

    job 'a' field:  b"S" + tag(job_id, spec_digest, fn_digest, args) + args

Specs and blobs are shared between jobs and stored under their digest. With
a secret the digest is *keyed* (BLAKE2b with a key derived from the secret),
so whoever lacks the secret cannot make a record that matches a digest a job
names: a worker recomputes each record's digest before using it. Blobs keep
their own kind-labelled tag as well (``seal``/``open``), so a function can
never pass for an environment. Someone with only the password therefore
cannot swap a job's function, arguments or spec, move a signed payload into
another job, or point a job's outcome at another client.

**An outcome** is tagged with its job id, the job's generation (bumped by
``requeue-failed``), the attempt's token and kind (``ok``/``err``)::

    b"S" + tag + token + b"\\n" + framed output and result-or-error
    b"U" + token + b"\\n" + framed              (a worker running --insecure)
    b"L"                                        (the coordinator's 'lost': no content)
    b"C"                                        (cancelled before it ran: no content)

The coordinator and cancel.lua hold no secret, so a ``lost`` or ``cancelled``
outcome carries nothing the client would show: the client writes the
message itself. Forging one only ends a job early, which a password holder
could do anyway by deleting it.

Without a secret (only when a role is told ``--insecure``) everything is
marked ``U`` and nothing is checked; a side *with* a secret refuses anything
unsigned or badly tagged (:class:`Rejected`). Malformed framing raises
:class:`Corrupt`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Mapping, Sequence

_SIGNED = b"S"
_UNSIGNED = b"U"
_LOST = b"L"
#: HMAC-SHA256 truncated to 128 bits (as RFC 2104 section 5 allows; forging one takes 2^128 tries, each
#: an attempt a worker sees): 16 bytes less per queued job, which is mostly its envelope.
_TAG_LEN = 16
_DIGEST_LEN = 8

#: The body the coordinator records for a job that failed 'lost'.
LOST_OUTCOME = _LOST


class Rejected(Exception):
    """A payload's signature is missing or wrong for our secret."""


class Corrupt(Exception):
    """A payload is missing, truncated or cannot be decoded."""


class Lost(Exception):
    """The outcome is the coordinator's unsigned 'lost' marker."""


class Cancelled(Exception):
    """The outcome is cancel.lua's unsigned 'cancelled' marker."""


def _hash_fields(fields: Mapping[str, str]) -> bytes:
    """An unambiguous encoding of a record's fields (length-prefixed, sorted by name)."""
    parts = []
    for name in sorted(fields):
        value = fields[name]
        parts.append(b"%d:%s%d:%s" % (len(name), name.encode(), len(value.encode()), value.encode()))
    return b"".join(parts)


#: A payload at least this long is hashed and handed on in place (a memoryview), never copied; a
#: shorter one is cheaper to copy than to view (each view and slice of one costs about as much).
VIEW_BYTES = 64 * 1024


def sliced(data: bytes | memoryview, start: int) -> bytes | memoryview:
    """``data[start:]``: a copy if short, a view into ``data`` if at least VIEW_BYTES (or already a view)."""
    if isinstance(data, bytes) and len(data) < VIEW_BYTES:
        return data[start:]
    return memoryview(data)[start:]


class Signer:
    """Seals and opens jobs, outcomes and shared blobs with a shared secret (None: ``--insecure``)."""

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret or None
        if self.secret is None:
            key = b""
            self._digest_key = b""
        else:
            # Derived keys, so the same secret never tags two kinds of message the same way.
            key = hashlib.sha256(b"cwredis tag\0" + self.secret).digest()
            self._digest_key = hashlib.sha256(b"cwredis digest\0" + self.secret).digest()
        # HMAC-SHA256 (RFC 2104) from two SHA-256 states keyed once, copied per message. Not
        # hmac.digest(): OpenSSL's HMAC releases the GIL on every call, and in a process with
        # another busy thread (a worker's, a client's) taking it back waits out the thread switch
        # interval -- measured 1.4 ms per tag instead of 1 us, a third of Executor.map's throughput.
        # hashlib's SHA-256 keeps the GIL for messages this small.
        padded = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def _tag(self, *parts: bytes | memoryview, tail: Sequence[bytes | memoryview] = ()) -> bytes:
        """HMAC of the parts joined by NUL bytes, the last of them continued by the ``tail`` pieces.

        Small parts are joined and hashed at once (the per-job case); a large
        last part and the tail are hashed where they are (a 1 MiB argument is
        never copied for it).
        """
        inner = self._inner.copy()
        if tail or len(parts[-1]) >= VIEW_BYTES:
            inner.update(b"\0".join((*parts[:-1], b"")))
            inner.update(parts[-1])
            for piece in tail:
                inner.update(piece)
        else:
            inner.update(b"\0".join(parts))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_TAG_LEN]

    # -- digests of shared records ------------------------------------------------------

    def digest(self, blob: bytes) -> str:
        """The address of a sealed blob; keyed by the secret, so no one without it can match it."""
        # base64 (11 characters), not hex (16): a job names two digests, each in its record.
        raw = hashlib.blake2b(blob, digest_size=_DIGEST_LEN, key=self._digest_key).digest()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def spec_digest(self, fields: Mapping[str, str]) -> str:
        """The address of a spec record, computed over all its fields (keyed, as :meth:`digest`)."""
        return self.digest(b"spec\0" + _hash_fields(fields))

    def session_hasher(self, session: str, kind: bytes) -> "hashlib.blake2b":
        """A keyed hash primed with a session's name and a kind of key (b"c" content, b"k" the caller's):
        the root of its job ids (:mod:`cwredis.session`), the same for every client with this secret."""
        hasher = hashlib.blake2b(digest_size=8, key=self._digest_key)
        hasher.update(b"session\0" + session.encode() + b"\0" + kind + b":")
        return hasher

    # -- shared blobs (function, environment) --------------------------------------------

    def seal(self, kind: bytes, data: bytes) -> bytes:
        if self.secret is None:
            return _UNSIGNED + data
        return _SIGNED + self._tag(b"blob", kind, data) + data

    def open(self, kind: bytes, blob: bytes | None) -> bytes:
        """The data inside a sealed blob; Rejected or Corrupt."""
        if not blob:
            raise Corrupt(f"{kind.decode()} payload is missing")
        marker = blob[:1]
        if marker == _SIGNED:
            if len(blob) < 1 + _TAG_LEN:
                raise Corrupt(f"{kind.decode()} payload is truncated")
            tag, data = blob[1:1 + _TAG_LEN], blob[1 + _TAG_LEN:]
            if self.secret is not None and not hmac.compare_digest(tag, self._tag(b"blob", kind, data)):
                raise Rejected(f"{kind.decode()} signature does not verify with this side's secret")
            return data
        if marker == _UNSIGNED:
            if self.secret is not None:
                raise Rejected(f"{kind.decode()} payload is unsigned but this side has a secret")
            return blob[1:]
        raise Corrupt(f"{kind.decode()} payload has an unknown format")

    def arg_digest(self, data: bytes) -> str:
        """The address of an argument blob (:mod:`cwredis.argblobs`): HMAC-SHA256 keyed by the secret
        (twice as fast as BLAKE2b here, for blobs of megabytes), 128 bits."""
        return self._tag(b"argblob", data).hex()

    def check_arg_digest(self, data: bytes, digest: str) -> None:
        """Rejected unless ``data`` is the argument blob ``digest`` names (checked with or without a secret:
        without one it still catches a damaged record)."""
        if not hmac.compare_digest(self.arg_digest(data), digest):
            raise Rejected(f"argument blob {digest} does not match the digest its job was signed with")

    def check_digest(self, what: str, blob: bytes, digest: str) -> None:
        """Rejected unless ``blob`` is what the (signed) digest names: a swapped record."""
        if self.secret is not None and not hmac.compare_digest(self.digest(blob), digest):
            raise Rejected(f"{what} record does not match the digest its job was signed with")

    # -- jobs ------------------------------------------------------------------------------

    def seal_job(self, job_id: str, spec_digest: str, fn_digest: str, args: bytes) -> bytes:
        """A job's envelope (stored as its arguments field): binds the id, spec, function and arguments."""
        if self.secret is None:
            return _UNSIGNED + args
        return _SIGNED + self._tag(b"job", job_id.encode(), spec_digest.encode(), fn_digest.encode(), args) + args

    def open_job(self, job_id: str, spec_digest: str, fn_digest: str,
                 envelope: bytes | None) -> bytes | memoryview:
        """The pickled arguments of a job whose envelope verifies (large ones a view into ``envelope``, not
        copied: :func:`sliced`); Rejected or Corrupt."""
        if not envelope:
            raise Corrupt("job arguments are missing")
        marker = envelope[:1]
        if marker == _SIGNED:
            if len(envelope) < 1 + _TAG_LEN:
                raise Corrupt("job arguments are truncated")
            tag, args = envelope[1:1 + _TAG_LEN], sliced(envelope, 1 + _TAG_LEN)
            if self.secret is not None and not hmac.compare_digest(
                    tag, self._tag(b"job", job_id.encode(), spec_digest.encode(), fn_digest.encode(), args)):
                raise Rejected("job signature does not verify with this side's secret (a different secret, "
                               "or a job altered or copied by someone without it)")
            return args
        if marker == _UNSIGNED:
            if self.secret is not None:
                raise Rejected("job is unsigned (its client ran --insecure) but this side has a secret")
            return sliced(envelope, 1)
        raise Corrupt("job arguments have an unknown format")

    # -- outcomes --------------------------------------------------------------------------

    def seal_outcome(self, job_id: str, generation: int, token: str, kind: str,
                     framed: bytes | Sequence[bytes]) -> bytes:
        """An outcome body for complete.lua: tagged with the job id, generation, attempt token and kind.

        ``framed`` may come in pieces (:func:`cwredis.serialization.frame_parts`): the body of a large
        result is then joined in one copy, not one per step.
        """
        head = token.encode() + b"\n"
        if not isinstance(framed, bytes):
            pieces = tuple(framed)
            if len(pieces) > 1:
                if self.secret is None:
                    return b"".join((_UNSIGNED, head, *pieces))
                tag = self._tag(b"outcome", job_id.encode(), b"%d" % generation, token.encode(), kind.encode(),
                                b"", tail=pieces)
                return b"".join((_SIGNED, tag, head, *pieces))
            framed = pieces[0]
        if self.secret is None:
            return _UNSIGNED + head + framed
        tag = self._tag(b"outcome", job_id.encode(), b"%d" % generation, token.encode(), kind.encode(), framed)
        return _SIGNED + tag + head + framed

    def open_outcome(self, job_id: str, generation: int, kind: bytes,
                     body: bytes | memoryview) -> bytes | memoryview:
        """The framed output and payload of an outcome that verifies (of a large result, a view into
        ``body``, not a copy: :func:`sliced`); Rejected, Corrupt, Lost or Cancelled."""
        marker = body[:1]  # (a memoryview's slice compares by content)
        if marker == _LOST:
            raise Lost()
        if marker == b"C":
            raise Cancelled()
        if marker == _SIGNED:
            tag, start = body[1:1 + _TAG_LEN], 1 + _TAG_LEN
        elif marker == _UNSIGNED:
            if self.secret is not None:
                raise Rejected("the outcome is unsigned (its worker ran --insecure) but this client has a secret")
            tag, start = b"", 1
        else:
            raise Corrupt("the outcome has an unknown format")
        head = bytes(body[start:start + 32])  # a token is a short decimal number
        token, sep, _ = head.partition(b"\n")
        if not sep or not token.isdigit():
            raise Corrupt("the outcome's framing is broken")
        framed = sliced(body, start + len(token) + 1)
        if marker == _SIGNED and self.secret is not None and not hmac.compare_digest(
                tag, self._tag(b"outcome", job_id.encode(), b"%d" % generation, token, kind, framed)):
            raise Rejected("the outcome's signature does not verify with this client's secret (a worker with "
                           "another secret, or an outcome forged or moved by someone without it)")
        return framed
