"""Job functions for the large-payload system tests (importable, so pickled by reference)."""

from __future__ import annotations

import hashlib


def fingerprint(payload, tag=None):
    """Type name, length and SHA-256 of ``payload`` as the job received it (and ``tag`` back)."""
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    return type(payload).__name__, len(data), hashlib.sha256(data).hexdigest(), tag


def echo(payload):
    """``payload`` itself: a large result."""
    return payload
