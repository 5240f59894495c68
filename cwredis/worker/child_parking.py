"""A job process parked on an inbox of its own: a job handed to it skips its worker and the pipe.

The child's side of child-level parking (the worker's side is
:mod:`cwredis.worker.parking`). After a job process records a job's outcome
itself and re-parks its worker (:mod:`cwredis.worker.direct`), park.lua lists
it among the worker's parked children in the same step, and it sends a
blocking ``BLMPOP`` of its inbox on its one connection (the one it records
on: no connection more than before), then waits on that socket and its job
pipe together. submit.lua hands the next job for the worker to it directly
(claimed for the worker, attempt charged, in the worker's in-flight list),
so the job starts without the worker's dispatch, a pipe write and a second
process wake-up.

What it reads ends the parking, and the worker is told before anything runs
(:class:`~cwredis.worker.protocol.Took` or
:class:`~cwredis.worker.protocol.Unparked`): the worker owns the job's
lease, timeout, cancellation and in-flight reconciliation, so the job must
be its before it starts. The worker's loop does not wait on a parked child's
pipe (see :mod:`cwredis.worker.parking`); when it must look now -- a job
with a timeout, a job left to it, an outcome for it to record, a failure --
the child also writes a byte to the worker's attention pipe (:meth:`poke`).
The child verifies the job's envelope with the secret before unpickling
anything, and its spec, function and environment against their signed
digests (fetching the ones it lacks on its connection, and large arguments
from their own key: :mod:`cwredis.worker.staged`); a job it cannot check
itself -- a bad signature, a missing or swapped record, argument blobs -- it
does not run: it passes the envelope to the worker, which verifies, rejects
(counting towards quarantine), fails or runs it as any claimed job. Fail
closed: nothing unverified is unpickled here.

A hand-off read later than the worker's lease was known to hold when the
child parked (park.lua says how long it still ran) may be stale: if the
worker's process group was stopped while the child blocked in its read, the
server can complete the hand-off, the lease lapse and the coordinator
requeue the job to another worker. Such a hand-off is confirmed first (one
atomic read, :meth:`ChildParking._owned`): run if still ours under a live
lease, dropped if requeued (the worker reconciles, as after a failed read),
and left to the worker -- which renews its lease
and confirms as for its own hand-offs (``Intake._take_jobs``) -- if ours but
the lease has lapsed. A lone job right after the last one never pays that
read: the lease is renewed every third of itself.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

from .. import job
from ..argblobs import named_blobs
from ..catalog import Catalog
from ..keys import Keys
from ..script_types import Claimed, parse_handed
from ..signing import Corrupt, Rejected, Signer
from .direct import DirectRecorder
from .protocol import ChildMessage, Direct, Run, Setup, Took, Unparked
from .staged import StagedArgs

log = logging.getLogger("cwredis.worker.child")

#: How long one blocking read of a parked child's inbox lasts before it is sent again. Long: an idle
#: child should cost the server nothing; a lost connection is seen on the socket at once anyway.
PARK_BLOCK_S = 30

#: The inbox message that ends a parking without a job (unpark_children.lua).
UNPARK = b"u"

#: What ChildParking._owned finds of a hand-off read late.
OWNED, LAPSED, GONE = "owned", "lapsed", "gone"


class ChildParking:
    """One job process's parking on its inbox; see the module docstring."""

    def __init__(self, setup: Setup, recorder: DirectRecorder, staged: StagedArgs,
                 send: Callable[[ChildMessage], None]) -> None:
        self._recorder = recorder
        self._send = send
        self._keys = Keys(setup.namespace)
        self._signer = Signer(setup.secret)
        self._catalog = Catalog(None, self._keys, self._signer)  # fetched on our own connection (_fetch)
        self._staged = staged  # (the job process's, on the same connection)
        self._attention = setup.attention
        self._worker_id = setup.worker_id
        self.fd: int | None = None  # the socket, while our blocking read is out
        self.holding: str | None = None  # the job we took and run: what we say of it, the worker must see now

    def poke(self) -> None:
        """Wake the worker's loop: it reads what we said (a byte on its attention pipe; full: it is awake)."""
        try:
            os.write(self._attention, b"!")
        except (BlockingIOError, OSError):
            pass

    def _urgent(self, message: ChildMessage) -> None:
        self._send(message)
        self.poke()

    def park(self) -> bool:
        """Send the blocking read of our inbox (park.lua has listed us); False if Redis failed."""
        try:
            self.fd = self._recorder.connection().send("BLMPOP", PARK_BLOCK_S, 1, self._recorder.inbox, "LEFT",
                                                       "COUNT", 1)
            return True
        except Exception as exc:
            log.debug("could not wait on our inbox (%s)", exc)
            self._recorder.drop()
            self.fd = None
            return False

    def take(self) -> Run | None:
        """Our inbox answered: the Run of a job we verified and now own (Took sent), or None.

        None: the parking ended without a job for us to run (Unparked sent,
        or Took without a spec: the worker has the job), or the read timed
        out and was sent again.
        """
        self.fd = None
        try:
            reply: Any = self._recorder.connection().receive()
        except Exception as exc:  # the connection failed: a job read by it stays in the worker's in-flight list
            log.debug("our inbox read failed (%s)", exc)
            self._recorder.drop()
            self._urgent(Unparked(failed=True))
            return None
        if reply is None:  # timed out: still listed, read again
            if not self.park():
                self._urgent(Unparked(failed=True))
            return None
        message = reply[1][0]
        if message == UNPARK:
            self._send(Unparked())
            return None
        handed = parse_handed([message])
        if not handed.claimed:
            self._urgent(Unparked(garbled=True))
            return None
        claimed, took = handed.claimed[0], time.monotonic()
        if took > self._recorder.lease_holds_until:
            # Read later than our worker's lease was known to hold when we parked (were we frozen in this
            # read?): the job may have been requeued and run elsewhere since. Confirm it is still ours.
            owned = self._owned(claimed)
            if owned != OWNED:
                if owned == LAPSED:  # ours, but requeued any moment now: the worker renews, then decides
                    self._urgent(Took(claimed.id, claimed.token, claimed.spec, claimed.function, claimed.args,
                                      claimed.attempts, claimed.generation, None, took))
                else:  # requeued (or no answer): the worker reconciles, which also resets the room it thinks
                    self._urgent(Unparked(failed=True))  # it has (this hand-off used one, server-side)
                return None
        verified = self._verified(claimed)
        if verified is None:
            self._urgent(Took(claimed.id, claimed.token, claimed.spec, claimed.function, claimed.args,
                              claimed.attempts, claimed.generation, None, took))
            return None
        spec, run = verified
        self._send(Took(claimed.id, claimed.token, claimed.spec, claimed.function, b"", claimed.attempts,
                        claimed.generation, spec, took))
        if spec.timeout_s is not None:
            self.poke()  # its timeout must be watched from now
        self.holding = claimed.id
        return run

    def _owned(self, claimed: Claimed) -> str | None:
        """Is a hand-off read late still ours? OWNED (and our worker's lease holds), LAPSED (ours, but the
        lease ran out: the coordinator may requeue it any moment), GONE (requeued: it runs elsewhere), or
        None (no answer: the worker reconciles). One atomic read (MULTI/EXEC): the job's fence and the
        lease as of one instant, so an OWNED job was not requeued before we tell the worker we took it."""
        commands: list[tuple[object, ...]] = [
            ("MULTI",), ("HMGET", self._keys.job(claimed.id), *job.FENCE),
            ("ZSCORE", self._keys.workers, self._worker_id), ("TIME",), ("EXEC",)]
        try:
            snapshot: Any = self._recorder.connection().pipeline(commands)[-1]  # EXEC's replies
            fence, lease, server_time = snapshot
        except Exception as exc:
            log.debug("could not confirm job %s is still ours (%s)", claimed.id, exc)
            self._recorder.drop()
            return None
        if not job.held_by(fence, claimed.token, self._worker_id):
            log.warning("job %s: handed to us while our worker's lease ran out, and since requeued; not running "
                        "it", claimed.id)
            return GONE
        now_ms = int(server_time[0]) * 1000 + int(server_time[1]) // 1000
        return OWNED if lease is not None and float(lease) > now_ms else LAPSED

    def _verified(self, claimed: Claimed) -> tuple[job.Spec, Run] | None:
        """The job's spec and its Run, every part verified with our secret; None if any part is not."""
        try:
            if claimed.args == job.STAGED_ARGS:  # read and verified on our connection (worker.staged)
                args = self._staged.open(claimed.id, claimed.spec, claimed.function)
            else:
                args = self._signer.open_job(claimed.id, claimed.spec, claimed.function, claimed.args)
            if args is None or named_blobs(args):
                return None  # unread staged arguments, or argument blobs: the worker fetches and checks them
            self._load(claimed)
            spec = self._catalog.spec(claimed.spec)
            if spec is None:
                return None
            function = self._catalog.function(claimed.function)
            env = self._catalog.env(spec.env)
        except (Rejected, Corrupt):
            return None
        # Recorded here, with this child's parking renewed (repark): the worker was parked, so its queues were
        # empty, and park.lua looks again.
        direct = Direct(claimed.token, claimed.generation, spec.client, repark=True)
        return spec, Run(claimed.id, claimed.function, function, args, spec.env, env, spec.forward_output, direct,
                         spec.retry_on)

    def _load(self, claimed: Claimed) -> None:
        """Fetch the records the job names that we have not cached (rarely: once per function and spec)."""
        specs, blobs = self._catalog.missing([claimed.spec], [claimed.function])
        if specs or blobs:
            self._fetch(specs, blobs)
        spec = self._catalog.routing_spec(claimed.spec)
        if spec is not None:
            _, envs = self._catalog.missing([], [spec.env])
            if envs:
                self._fetch([], envs)

    def _fetch(self, specs: Sequence[str], blobs: Sequence[str]) -> None:
        """One round trip on our connection; a failure leaves them missing (the worker then takes the job)."""
        commands: list[tuple[object, ...]] = [("HGETALL", self._keys.spec(d)) for d in specs]
        commands += [("HMGET", self._keys.blob(d), job.BLOB_DATA, job.BLOB_NAME) for d in blobs]
        try:
            replies: list[Any] = self._recorder.connection().pipeline(commands)
        except Exception as exc:
            log.debug("could not fetch a job's records (%s)", exc)
            self._recorder.drop()
            return
        self._catalog.add(zip(specs, map(_as_mapping, replies[:len(specs)])), zip(blobs, replies[len(specs):]))


def _as_mapping(reply: Any) -> Mapping[bytes | str, bytes | str]:
    """A raw HGETALL reply as a mapping: RESP2 sends a flat list of fields and values, RESP3 a map."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2]))
