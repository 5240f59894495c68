"""Settings and every default, each explained once; URL and secret resolution."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

#: How long a worker may go without renewing its lease before the coordinator
#: declares it dead and requeues its jobs. The coordinator publishes its value.
DEFAULT_LEASE_S = 30.0

#: How often the coordinator sweeps expired leases and due delayed jobs, as a
#: fraction of the lease; bounded so short test leases still sweep promptly.
SWEEP_FRACTION = 0.1
MIN_SWEEP_S = 0.05
MAX_SWEEP_S = 1.0

#: How long a client's uncollected outcomes wait in Redis (the contract's 7 days).
RESULT_TTL_S = 7 * 24 * 3600

#: How long the record of a finished (done) job stays for ``cw-admin show``.
DONE_TTL_S = 3600

#: How long a parked worker's BLMPOP on its inbox blocks before it looks around
#: (stop flag) and claims once, which renews its parking.
BLOCK_TIMEOUT_S = 1.0

#: Back-off between reconnect attempts after Redis goes away: start, cap.
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0

#: A timed-out attempt that will be retried waits this long (doubling per
#: attempt, capped) in the delayed set, so a job that always times out does
#: not hog a slot back to back.
RETRY_DELAY_S = 0.5
RETRY_DELAY_MAX_S = 30.0

#: Prefetch: a worker whose jobs take less than SLOW_JOB_S on average holds
#: several claimed jobs per slot -- enough for about PREFETCH_WINDOW_S of
#: work, at most MAX_PREFETCH -- so a child never waits for a Redis round trip
#: between short jobs. Slow jobs are claimed one per slot, so idle workers
#: elsewhere get them (fan-out stays fair).
SLOW_JOB_S = 0.02
PREFETCH_WINDOW_S = 0.005
MAX_PREFETCH = 32
#: At most this many short jobs are written ahead to a busy child.
MAX_AHEAD = 32

#: A job written ahead to a child is asked back once the job before it has
#: run STUCK_FACTOR times the average (at least STUCK_MIN_S).
STUCK_FACTOR = 10
STUCK_MIN_S = 0.01

#: Slow jobs: a child's next job is claimed this long before its current one
#: should end (by the running average), so it starts without a gap.
JIT_LEAD_S = 0.01

#: While a worker's slots still have work queued, finished outcomes gather for
#: at most this long (or up to MAX_RECORD_BATCH) before one round trip records
#: them all; a slot running dry records at once.
RECORD_DELAY_S = 0.002
MAX_RECORD_BATCH = 256

#: How often a worker passes on jobs' progress reports, at most.
PROGRESS_INTERVAL_S = 0.2

#: How much of a failed job's output is kept with it for ``cw-admin show``.
FAILED_OUTPUT_TAIL_BYTES = 4096

#: Read timeout of a worker's own calls to Redis. Below the 10 s of other
#: roles: a stalled connection must not hold the worker's loop (timeouts,
#: signals) for long; a call that times out is sent again (every step is fenced
#: or idempotent).
WORKER_CALL_TIMEOUT_S = 3.0

#: How long a stopping worker keeps trying to reach Redis to record what it
#: owes and hand back its jobs; past that the coordinator recovers them when its
#: lease expires (a job whose outcome was not recorded runs again).
WORKER_FINISH_S = 3.0

#: How long a worker's loop waits for its fetcher thread to finish a claim
#: before it records without claiming (an outage must not hold the loop).
CLAIM_LOCK_WAIT_S = 0.05

#: The longest a worker's loop sleeps with nothing to do: it then looks at its
#: stop request, timeouts, and (on kernels without pidfds) its children.
WORKER_IDLE_TICK_S = 0.5

#: Lease renewals per lease period: one lost renewal still leaves two.
RENEWALS_PER_LEASE = 3

#: Weight of the newest job in a worker's running average of job durations.
JOB_TIME_AVERAGE_WEIGHT = 0.2

#: A job is written ahead into a child's pipe only if its arguments are this
#: small: a full pipe (64 KiB) would block the worker's loop.
MAX_SEND_AHEAD_BYTES = 4096

#: How long a stopping child may take to exit between jobs before it is killed.
CHILD_SHUTDOWN_GRACE_S = 2.0

#: Unpickled functions a job process keeps (by content digest).
FUNCTION_CACHE_SIZE = 256

#: How much of a job's output a job process keeps for the client.
OUTPUT_TAIL_BYTES = 64 * 1024

#: Python's thread switch interval in the worker (default 5 ms): short, so the
#: loop feeding the children is never held up long by the Redis-facing threads.
WORKER_SWITCH_INTERVAL_S = 0.0005

#: Default queue, attempts and URL, as the contract fixes them.
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_URL = "redis://localhost:6379/0"

#: How many outcomes a client reads per round trip.
RESULT_BATCH = 512

#: How many jobs ``Executor.map`` keeps submitted but not yet yielded, per
#: chunk of work; it bounds client memory over huge iterables.
MAP_WINDOW = 20_000
#: How many jobs one pipelined submit sends.
SUBMIT_BATCH = 500


def cwredis_home() -> Path:
    """``$CWREDIS_HOME``, defaulting to ``~/.cwredis``."""
    return Path(os.environ.get("CWREDIS_HOME") or Path.home() / ".cwredis")


def url_file() -> Path:
    return cwredis_home() / "url"


def secret_file() -> Path:
    return cwredis_home() / "secret"


class UrlFromFile(str):
    """A URL that came from ``$CWREDIS_HOME/url``: the connection layer reads the file again
    (:func:`url_from_file`) when the server refuses the password or has vanished, since a
    restarted coordinator or a new ``cw-slurm`` allocation writes a new port or password there.

    A ``str`` subclass so that every role passes it on unchanged as the URL it is; what
    re-reads it is only :func:`cwredis.connection.connect`. An explicit URL or
    ``$CWREDIS_URL`` is a plain ``str`` and is never replaced.
    """


def local_url_file() -> Path:
    """Where the embedded server's Unix socket is told to roles on its own host (see :func:`url_from_file`)."""
    return cwredis_home() / "url.local"


def url_from_file() -> UrlFromFile | None:
    """The URL in ``$CWREDIS_HOME/url`` now, or None while there is none.

    On the server's own host, its Unix-socket URL instead (faster than TCP
    loopback, and the socket sits in the 0700 data dir): ``url.local`` names
    the host, the TCP URL it stands for and the socket's URL, and is used
    only while that TCP URL is still the one in ``url`` (so a stale file
    never wins over a newer server).
    """
    try:
        text = url_file().read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        local = json.loads(local_url_file().read_text())
    except (OSError, ValueError):
        local = None
    if isinstance(local, dict) and local.get("host") == socket.gethostname() and local.get("url") == text:
        return UrlFromFile(str(local.get("socket_url") or text))
    return UrlFromFile(text)


def resolve_url(explicit: str | None = None) -> str:
    """The contract's order: explicit argument, ``$CWREDIS_URL``, ``$CWREDIS_HOME/url``, default."""
    if explicit:
        return explicit
    env = os.environ.get("CWREDIS_URL")
    if env:
        return env
    return url_from_file() or DEFAULT_URL


def resolve_secret() -> bytes | None:
    """``$CWREDIS_SECRET``, else the stripped content of ``$CWREDIS_HOME/secret``, else None."""
    env = os.environ.get("CWREDIS_SECRET")
    if env:
        return env.encode()
    try:
        text = secret_file().read_bytes().strip()
    except OSError:
        return None
    return text or None


_PASSWORD = re.compile(r"(?P<scheme>rediss?://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and errors."""
    return _PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
