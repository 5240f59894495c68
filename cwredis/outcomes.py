"""Turning an outcome entry's body into a result or a RemoteError, after its signature checked out.

Used by the client's results thread for every outcome, and by a session's
submit for the outcomes of jobs that had finished in an earlier run.
"""

from __future__ import annotations

import traceback
from typing import Any, NamedTuple

import cloudpickle

from . import remote_errors
from .errors import CANCELLED_ERROR, LOST_ERROR, LOST_TRACEBACK, RemoteError
from .serialization import decode_error, unframe_outcome
from .signing import Cancelled, Corrupt, Lost, Rejected, Signer


class Decoded(NamedTuple):
    """A verified outcome: ``ok`` with the result as ``value``, or a RemoteError; the job's output."""

    ok: bool
    value: Any
    output: str


def decode(signer: Signer, job_id: str, generation: int, kind: bytes, body: bytes | memoryview) -> Decoded:
    """Verify and decode one outcome; never raises (a bad one becomes a RemoteError saying why).

    Nothing is unpickled unless the outcome's signature (job id, generation,
    attempt, kind) verified with our secret.
    """
    try:
        output, payload = unframe_outcome(signer.open_outcome(job_id, generation, kind, body))
    except Lost:  # the coordinator's: no content, so the text is ours
        return Decoded(False, RemoteError(job_id, "lost", LOST_ERROR, LOST_TRACEBACK), "")
    except Cancelled:  # cancel.lua's: likewise
        return Decoded(False, RemoteError(job_id, "cancelled", CANCELLED_ERROR,
                                          "The job was cancelled before it started."), "")
    except Rejected as exc:
        return Decoded(False, RemoteError(job_id, "rejected", f"RejectedError: outcome refused: {exc}",
                                          str(exc)), "")
    except Corrupt as exc:
        return Decoded(False, RemoteError(job_id, "corrupt", str(exc), str(exc)), "")
    if kind != b"ok":
        return Decoded(False, remote_errors.from_record(job_id, decode_error(payload)), output)
    try:
        return Decoded(True, cloudpickle.loads(payload), output)
    except Exception as exc:
        error = f"result could not be decoded: {type(exc).__name__}: {exc}"
        return Decoded(False, RemoteError(job_id, "corrupt", error, traceback.format_exc()), output)
