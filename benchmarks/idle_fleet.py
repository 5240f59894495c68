"""Many idle workers in one process, with the worker's own code: ``python idle_fleet.py COUNT QUEUE``.

The ``idle_workers`` benchmark needs 1,000 idle workers; 1,000 worker
processes (each a supervisor with its job children) do not fit on a small
machine, so a few of these processes simulate them. Each simulated worker
does what a parked ``cw-worker`` does while idle, through the worker's own
classes -- :class:`cwredis.worker.link.Link` (its own connections) and
:class:`cwredis.worker.lease.Lease` -- at the worker's own cadence:

* it parks with ``Link.claim`` (as its fetcher does when the queues are empty);
* a fetcher thread blocks on its inbox with ``Link.read_inbox`` for
  ``BLOCK_TIMEOUT_S`` and, when that times out, asks ``Link.still_parked``
  (reads only), claiming again only if it is not (as ``Intake.run``);
* a lease thread runs ``Lease.run``: a heartbeat every lease /
  ``RENEWALS_PER_LEASE`` with the description a worker publishes
  (``Supervisor._describe``'s fields), then the stray check, a read of its
  in-flight list (as ``Recorder.check_strays``).

What differs from real workers: no job child processes (idle ones would only
wait on their pipes), and they all start within seconds of each other.
The URL comes in ``CWREDIS_URL``. Runs until SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid

from cwredis import config
from cwredis.keys import DEFAULT_KEYS
from cwredis.signing import Signer
from cwredis.worker.lease import Lease
from cwredis.worker.link import Link, LinkDown
from cwredis.worker.stop import StopRequest


def idle_worker(url: str, queue: str, stop: StopRequest) -> None:
    """One simulated worker: park, then wait on the inbox; its lease renewed by a thread of its own."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    link = Link(url, DEFAULT_KEYS, Signer(None), worker_id, [queue])
    since = str(int(time.time()))

    def check_strays() -> None:
        link.inflight_ids()  # the stray check's read

    lease = Lease(link, stop, check=check_strays, reconnected=lambda: None,
                  describe=lambda: {"queues": queue, "concurrency": "1", "running": "", "since": since,
                                    "started": ""})
    threading.Thread(target=lease.run, daemon=True).start()
    room = 0
    while True:
        try:
            if not room:
                room = lease.renewing(lambda: link.claim(lease.lease_ms, 1, 1)).room
                continue
            if link.read_inbox(config.BLOCK_TIMEOUT_S, room) is not None or not link.still_parked():
                room = 0  # a wake (none should come: nothing is submitted to this queue), or forgotten
        except LinkDown as down:
            time.sleep(link.failed(down))


def main(count: int, queue: str) -> None:
    url = os.environ["CWREDIS_URL"]
    stop = StopRequest()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for _ in range(count):
        threading.Thread(target=idle_worker, args=(url, queue, stop), daemon=True).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
