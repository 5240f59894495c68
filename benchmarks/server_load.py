"""Client roles that drive the server's scripts directly: the server ceiling and a rack dying at once.

Both call cwredis's own scripts through ``cwredis.scripts.Scripts`` -- the
same ``submit.lua``, ``claim.lua`` and ``complete.lua`` calls, with records
shaped as a client and a worker make them -- but without the client's and
the worker's Python around them, which on a 2-core machine would saturate
long before one Valkey core does.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

#: Job arguments as a signed no-op's: b"S" + a 16-byte tag + a 20-byte pickle.
ARGS_BYTES = 37
#: How long the outcome (and the records) of a driven job live, as the client's defaults.
DONE_TTL_MS, RESULT_TTL_MS, BLOB_TTL_MS = 3_600_000, 3_600_000, 3_600_000
#: How often a ceiling driver drops the outcomes delivered to it (a client would read and trim them).
DROP_OUTCOMES_EVERY = 1_000


def _records(client_id: str, queue: str) -> dict:
    """What submit.lua stores once per submitter: a spec, a function blob and an environment blob."""
    from cwredis import job

    spec = job.Spec(client=client_id, queue=queue, env=f"env-{client_id}", timeout_s=None, max_attempts=3)
    return dict(queue=queue, spec_digest=f"sp{client_id}", spec_fields=spec.to_hash(), fn_digest=f"fn{client_id}",
                fn_blob=b"U" + os.urandom(200), fn_name="jobs.noop", env_digest=f"env-{client_id}",
                env_blob=b"U" + os.urandom(300), blob_ttl_ms=BLOB_TTL_MS)


def _drive(url: str, name: str, batch: int, start_at: float, stop_at: float, counts: list[int],
           errors: list[str]) -> None:
    """One connection's loop: each round trip completes the ``batch`` jobs claimed by the previous one, submits
    ``batch`` jobs and claims ``batch`` -- a worker's record-and-claim pipeline and a client's submit, together."""
    import redis

    from cwredis.keys import DEFAULT_KEYS
    from cwredis.scripts import Scripts
    from cwredis.script_types import Completion
    from cwredis.submitter import new_job_id

    try:
        r = redis.Redis.from_url(url, socket_timeout=60)
        scripts = Scripts(r, DEFAULT_KEYS)
        scripts.load()
        records = _records(name, f"ceiling-{name}")
        if scripts.submit(r, jobs=[], **records) == -1:
            raise RuntimeError("submit.lua refused the records")
        slim = dict(records, spec_fields=None, fn_blob=None, env_blob=None)
        body = b"S" + os.urandom(40)
        held: list = []
        done = 0
        while time.time() < start_at:
            time.sleep(0.01)
        while time.time() < stop_at:
            pipe = r.pipeline(transaction=False)
            if held:
                scripts.complete(pipe, worker_id=name, outcomes=[Completion(c.id, c.token, name, "ok", body)
                                                                 for c in held],
                                 done_ttl_ms=DONE_TTL_MS, result_ttl_ms=RESULT_TTL_MS)
            scripts.submit(pipe, jobs=[(new_job_id(), b"S" + os.urandom(ARGS_BYTES - 1)) for _ in range(batch)],
                           **slim)
            scripts.claim(pipe, worker_id=name, queues=[slim["queue"]], lease_ms=30_000, max_count=batch,
                          start_count=batch)
            replies = scripts.execute(pipe)
            held = scripts.parse_claim(replies[-1]).claimed
            done += 1
            if done % (DROP_OUTCOMES_EVERY // batch) == 0:
                r.delete(DEFAULT_KEYS.results(name), DEFAULT_KEYS.result_seq(name))
        counts.append(done)
    except Exception as exc:  # reported to the parent with the result
        errors.append(f"{name}: {type(exc).__name__}: {exc}")


def role_ceiling(url, connections, batch, start_at, stop_at, timeout, **_):
    """``connections`` threads, each its own connection, driving the scripts (``batch`` jobs per call) from
    ``start_at`` to ``stop_at`` (wall clock, shared by every driver process, so the parent can measure the
    server in between)."""
    counts: list[int] = []
    errors: list[str] = []
    tag = secrets.token_hex(3)
    threads = [threading.Thread(target=_drive, args=(url, f"c{tag}-{i}", batch, start_at, stop_at, counts, errors),
                                daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.time() + 60))
    if errors:
        raise RuntimeError(f"{len(errors)} driver connection(s) failed; first: {errors[0]}")
    return {"round_trips": sum(counts), "connections": len(counts)}


def role_mass_death(url, n, lease_s, timeout, **_):
    """``n`` workers each claim one job and die together; seconds until every job is back on its queue.

    The jobs are submitted by a real ``ClientThread``; the workers are ids that claim through claim.lua
    (what a worker's claim does) and never renew: a rack losing power. The coordinator is the stack's.
    """
    import redis

    import cwredis
    import jobs
    from cwredis.keys import DEFAULT_KEYS
    from cwredis.scripts import Scripts
    from measuring import Counter

    queue = f"rack-{secrets.token_hex(3)}"
    r = redis.Redis.from_url(url)
    scripts = Scripts(r, DEFAULT_KEYS)
    scripts.load()
    c = Counter(0)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad, queue=queue)
    t.start()
    for i in range(n):
        t.submit(jobs.noop, i)
    queue_key = DEFAULT_KEYS.queue(queue)
    lease_ms = int(lease_s * 1000)
    pipe = r.pipeline(transaction=False)
    for k in range(n):  # one claim each, pipelined: they all hold their job within a fraction of a second
        scripts.claim(pipe, worker_id=f"{queue}-node-{k}", queues=[queue], lease_ms=lease_ms, max_count=1,
                      start_count=1)
    held = sum(len(scripts.parse_claim(reply).claimed) for reply in scripts.execute(pipe))
    died = time.monotonic()
    if held != n or r.llen(queue_key):
        raise RuntimeError(f"{held} of {n} jobs claimed, {r.llen(queue_key)} left on the queue")
    first = None
    while (back := r.llen(queue_key)) < n:
        if back and first is None:
            first = time.monotonic() - died
        if time.monotonic() - died > timeout:
            raise TimeoutError(f"{back} of {n} jobs back after {timeout}s")
        time.sleep(0.01)
    recovered = time.monotonic() - died
    first = recovered if first is None else first
    return {"recovered_s": recovered, "recovered_over_lease": recovered / lease_s,
            "first_back_s": first, "sweep_s": recovered - first, "within_two_leases": int(recovered <= 2 * lease_s)}
