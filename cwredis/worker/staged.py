"""A job process reads a job's large arguments itself, from the key they are staged in (``job.STAGED_ARGS``).

A client writes arguments of ``scripts.STAGE_BYTES`` or more beside the job
(:meth:`cwredis.scripts.Scripts.stage_args`), and the job's record names them
only by a marker. The worker writes such a job to a job process unopened
(``Run.staged_spec``): the process reads the envelope on its own connection
and verifies it with the secret, so 1 MiB of arguments crosses once, from
Redis to the process that unpickles them -- not into the worker, through its
HMAC and down the pipe, one job after another in the worker's one thread. A
parked job process does the same for a job handed to it
(:mod:`cwredis.worker.child_parking`).

Fail closed: nothing of the job is unpickled before its envelope verifies.
Arguments that cannot be read, are missing, do not verify, or name argument
blobs (the worker fetches and checks those) are not opened here: the process
runs nothing and says so (``CannotOpen``), and the worker opens the job
itself, then rejects, fails or resends it as any claimed job.
"""

from __future__ import annotations

import logging
from typing import Any

from ..argblobs import named_blobs
from ..keys import Keys
from ..signing import Corrupt, Rejected, Signer
from .direct import DirectRecorder

log = logging.getLogger("cwredis.worker.child")


class StagedArgs:
    """Reads and verifies staged arguments on a job process's one connection (its recorder's)."""

    def __init__(self, recorder: DirectRecorder, keys: Keys, signer: Signer) -> None:
        self._recorder = recorder
        self._keys = keys
        self._signer = signer

    def open(self, job_id: str, spec_digest: str, fn_digest: str) -> bytes | memoryview | None:
        """The job's pickled arguments, verified; None when this process cannot open them (see the module)."""
        try:
            envelope: Any = self._recorder.connection().pipeline([("GET", self._keys.staged_args(job_id))])[0]
        except Exception as exc:
            log.debug("could not read job %s's arguments (%s)", job_id, exc)
            self._recorder.drop()
            return None
        if envelope is None:
            return None
        try:
            args = self._signer.open_job(job_id, spec_digest, fn_digest, envelope)
        except (Rejected, Corrupt):
            return None
        return None if named_blobs(args) else args
