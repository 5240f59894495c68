"""Settings and every default, each explained once; URL and secret resolution."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from .errors import ConfigError
from .safefiles import create_private, read_private

log = logging.getLogger("cwredis")

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
#: How long a ClientThread/Executor being built keeps trying a refused connection before it raises
#: cwredis.ConnectionError; it is also the connect timeout of that first contact (a black-holed host).
CLIENT_START_TIMEOUT_S = 5.0

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

#: How often a busy worker looks at its inbox for cancellations of its running jobs.
CANCEL_POLL_S = 1.0

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

#: A worker's description (``cw:worker:<w>``, for ``cw-admin workers``) lives this many leases
#: past its last refresh. A heartbeat refreshes it only once half of that has run down (each
#: refresh is a write to the append-only file), so an idle worker does so about once every five
#: leases. The coordinator deletes a dead worker's description when it forgets the worker (one
#: lease after it expired); this bound is for a cluster with no coordinator running.
WORKER_INFO_TTL_LEASES = 10

#: Weight of the newest job in a worker's running average of job durations.
JOB_TIME_AVERAGE_WEIGHT = 0.2

#: A job is written ahead into a child's pipe only if its arguments are this
#: small: a full pipe (64 KiB) would block the worker's loop.
MAX_SEND_AHEAD_BYTES = 4096

#: A result at least this large is recorded by its job process itself, straight to Redis, even when
#: the worker would batch it: it never crosses the pipe to the worker (two copies and a pickle fewer,
#: and the worker's one thread is not the bottleneck for every child's large results); from the second
#: such result of a function on a slot (worker.pool.Slot.large_results).
DIRECT_RECORD_BYTES = 64 * 1024

#: How long a stopping child may take to exit between jobs before it is killed.
CHILD_SHUTDOWN_GRACE_S = 2.0

#: Unpickled functions a job process keeps (by content digest).
FUNCTION_CACHE_SIZE = 256

#: How much of a job's output a job process keeps for the client (and its worker keeps live in Redis).
OUTPUT_TAIL_BYTES = 64 * 1024

#: How often a running job's new output goes to its worker, and the worker writes it to Redis, at most
#: (``cw-admin logs``, the dashboard): often enough to watch, rarely enough to cost nothing per print.
LIVE_OUTPUT_INTERVAL_S = 0.5

#: Python's thread switch interval in the worker (default 5 ms): short, so the
#: loop feeding the children is never held up long by the Redis-facing threads.
WORKER_SWITCH_INTERVAL_S = 0.0005

#: Default queue, attempts and URL, as the contract fixes them.
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_URL = "redis://localhost:6379/0"

#: How many outcomes a client reads per round trip.
RESULT_BATCH = 512

#: A top-level argument (a buffer or str) at least this large that a client sends again is stored
#: once in Redis as an argument blob (:mod:`cwredis.argblobs`).
LARGE_ARG_BYTES = 64 * 1024

#: How many jobs ``Executor.map`` keeps submitted but not yet yielded, per
#: chunk of work; it bounds client memory over huge iterables.
MAP_WINDOW = 20_000
#: How many jobs one pipelined submit sends.
SUBMIT_BATCH = 500
#: ...and at most about this many bytes of arguments (a batch ends after the job that
#: reaches it): workers start on large jobs while later batches are still on their way.
SUBMIT_BATCH_BYTES = 4 << 20
#: How many bytes of pickled arguments ``Executor.map`` keeps submitted but not yet
#: yielded (besides MAP_WINDOW jobs): what bounds the Redis memory of a map's queued
#: large jobs -- at most this plus the one batch that crossed it (see README). It also
#: bounds how many large jobs can run at once: about this / the size of one job's arguments.
MAP_WINDOW_BYTES = 256 << 20


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
    """The URL in ``$CWREDIS_HOME/url`` now, or None while there is none; ConfigError if that file
    (or the home holding it) is not safely ours.

    On the server's own host, its Unix-socket URL instead (faster than TCP
    loopback, and the socket sits in the 0700 data dir): ``url.local`` names
    the host, the TCP URL it stands for and the socket's URL, and is used
    only while that TCP URL is still the one in ``url`` (so a stale file
    never wins over a newer server).
    """
    content = read_private(url_file(), "URL file")
    text = content.decode(errors="replace").strip() if content is not None else ""
    if not text:
        return None
    try:
        local_content = read_private(local_url_file(), "local URL file")
        local = json.loads(local_content) if local_content is not None else None
    except ValueError:
        local = None
    if isinstance(local, dict) and local.get("host") == socket.gethostname() and local.get("url") == text:
        return UrlFromFile(str(local.get("socket_url") or text))
    return UrlFromFile(text)


def resolve_url(explicit: str | None = None) -> str:
    """The contract's order: explicit argument, ``$CWREDIS_URL``, ``$CWREDIS_HOME/url``, default.

    ConfigError if the URL file (or the home holding it) is not safely ours:
    someone else's URL would hand them our jobs' results and our password.
    """
    if explicit:
        return explicit
    env = os.environ.get("CWREDIS_URL")
    if env:
        return env
    return url_from_file() or DEFAULT_URL


# ------------------------------------------------------------------------ secret

#: The shortest secret accepted: a guessable secret lets anyone who can write to Redis sign jobs.
MIN_SECRET_CHARS = 32
#: The placeholder the example files in deploy/ carry; a copied example is not a secret.
EXAMPLE_SECRET_PREFIX = "CHANGE-ME"


class ResolvedSecret(NamedTuple):
    """A signing secret and where it came from (``$CWREDIS_SECRET`` or the file's path), for logs."""

    value: bytes
    source: str


def find_secret() -> ResolvedSecret | None:
    """``$CWREDIS_SECRET``, else the stripped content of ``$CWREDIS_HOME/secret``, else None.

    A secret that exists but is unusable is a ConfigError, never "no secret":
    an empty, unreadable or untrusted file (see :mod:`cwredis.safefiles`), a
    value shorter than MIN_SECRET_CHARS, or the example value from deploy/.
    """
    env = os.environ.get("CWREDIS_SECRET", "").strip()
    if env:
        return check_secret(env.encode(), "$CWREDIS_SECRET")
    path = secret_file()
    content = read_private(path, "secret file", private=True)
    if content is None:
        return None
    value = content.strip()
    if not value:
        raise ConfigError(f"the secret file {path} is empty; delete it (the coordinator writes a new one) "
                          "or put a random string of at least 32 characters in it")
    return check_secret(value, str(path))


def check_secret(value: bytes, source: str) -> ResolvedSecret:
    """``value`` as a ResolvedSecret; ConfigError if it is the example value or too short."""
    text = value.decode(errors="replace")
    if text.startswith(EXAMPLE_SECRET_PREFIX):
        raise ConfigError(f"the secret in {source} is the example value from deploy/; replace it with a "
                          "random string, e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if len(text) < MIN_SECRET_CHARS:
        raise ConfigError(f"the secret in {source} has {len(text)} characters; at least {MIN_SECRET_CHARS} are "
                          "needed, e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return ResolvedSecret(value, source)


def insecure_requested(insecure: bool = False) -> bool:
    """True if told to run without a secret: ``insecure=True``/``--insecure`` or ``$CWREDIS_INSECURE=1``."""
    return insecure or os.environ.get("CWREDIS_INSECURE", "").strip().lower() in ("1", "true", "yes", "on")


def require_secret(insecure: bool = False) -> bytes | None:
    """The signing secret of a client or worker; None only when told it may run insecure and none is set.

    Fail closed: with no secret and no permission to run unsigned, ConfigError
    with a one-line message saying how to set one. An unusable secret is an
    error even with ``insecure`` (see :func:`find_secret`).
    """
    found = find_secret()
    if found is not None:
        log.info("signing secret from %s", found.source)
        return found.value
    if insecure_requested(insecure):
        log.warning("no signing secret: running insecure (anyone who can write to Redis can run code here)")
        return None
    raise ConfigError(
        f"no signing secret: set $CWREDIS_SECRET (the same random string of at least {MIN_SECRET_CHARS} "
        f"characters on every client and worker), or start `cw-coordinator` once with this $CWREDIS_HOME "
        f"(it writes {secret_file()}); to run unsigned anyway, pass --insecure, set CWREDIS_INSECURE=1 "
        "or give insecure=True")


def secret_source() -> str:
    """Where the secret comes from, for a log line: ``$CWREDIS_SECRET``, the file's path, or why none."""
    try:
        found = find_secret()
    except ConfigError as exc:
        return f"unusable ({exc})"
    return found.source if found is not None else "none (running insecure)"


def ensure_secret() -> ResolvedSecret:
    """The secret, creating ``$CWREDIS_HOME/secret`` (0600, a fresh random value) if none resolves.

    The coordinator calls this with any URL, so that workers and clients
    sharing its home are signed with no setup; a secret file someone else
    wrote first is left alone (and checked).
    """
    found = find_secret()
    if found is not None:
        return found
    path = secret_file()
    if create_private(path, secrets.token_urlsafe(32) + "\n"):
        log.info("no signing secret was set: created %s (mode 0600); clients and workers with this "
                 "$CWREDIS_HOME use it", path)
    found = find_secret()
    assert found is not None
    return found


# ------------------------------------------------------------------------ masking


def mask_url(url: str) -> str:
    """The URL with every password redis-py would read from it replaced by ``***``, for logs and errors.

    Parsed as redis-py parses it (``urllib.parse``): the password of the user
    info (everything between the first ``:`` and the *last* ``@`` of the
    network location, so a password may hold ``@`` or ``:``), in every scheme
    (``redis``, ``rediss``, ``unix``, ``redis+sentinel`` with its host list),
    and any ``password``/``*_password`` query parameter. Text that does not
    parse is masked whole after its scheme. A password holding ``/``, ``?``
    or ``#`` not percent-encoded (where ``urllib`` would end the host and show
    the rest as a path or query) is masked too: then everything between the
    scheme and the last ``@`` is taken as the user info.
    """
    scheme, sep, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if sep and at and ":" in userinfo and any(c in userinfo for c in "/?#"):
        return mask_url(f"{scheme}://{userinfo.partition(':')[0]}:***@{tail}")
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://***" if sep else "***"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else netloc
    query = "&".join(_mask_param(param) for param in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    # Rebuilt by hand: urlunsplit drops the "//" of an empty host (unix:///path).
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def _mask_param(param: str) -> str:
    name, eq, _value = param.partition("=")
    return f"{name}=***" if eq and unquote(name).lower().endswith("password") else param


def default_queues() -> list[str]:
    """The queues a ``cw-worker`` without ``--queue`` serves: ``$CWREDIS_QUEUES`` (names separated by commas
    or spaces, earlier first), else ``default``. The systemd unit passes them this way, so that its instance
    name (``cw-worker@3``) is just a number."""
    names = os.environ.get("CWREDIS_QUEUES", "").replace(",", " ").split()
    return names or [DEFAULT_QUEUE]
