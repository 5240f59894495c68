"""The coordinator's sweep, one pass at a time, on a real server: each expired worker on its own."""

from __future__ import annotations

import logging

import pytest
import redis

from cwredis import coordinator as coordinator_module, job
from cwredis.coordinator import Coordinator
from cwredis.keys import Keys
from cwredis.script_types import Requeue

KEYS = Keys()
T0 = 1_000_000
LEASE_MS = 30_000
SPEC = job.Spec(client="c1", queue="default", env="e1", timeout_s=None, max_attempts=3)


@pytest.fixture
def coordinator(server):
    c = Coordinator(server.url, lease_s=LEASE_MS / 1000)
    yield c
    c._redis.close()


def submit(c, *job_ids):
    c._scripts.submit(c._redis, queue="default", spec_digest="sp1", spec_fields=SPEC.to_hash(), fn_digest="fn1",
                      fn_blob=b"Ufn", fn_name="m.f", env_digest="e1", env_blob=b"Uenv",
                      jobs=[(j, b"Uargs") for j in job_ids], blob_ttl_ms=60_000)


def claim(c, worker, n, now):
    reply = c._scripts.claim(c._redis, worker_id=worker, queues=["default"], lease_ms=LEASE_MS, max_count=n,
                             now_ms=now)
    return c._scripts.parse_claim(reply).claimed


def state(c, job_id):
    state = job.state_of(*c._redis.hmget(KEYS.job(job_id), job.STATE, job.SPEC))
    return state.encode() if state else None


def test_a_worker_whose_recovery_fails_is_logged_and_skipped_and_never_crowds_out_the_others(
        coordinator, monkeypatch, caplog):
    c = coordinator
    submit(c, "x1", "x2", "good", "retry")
    claim(c, "broken-1", 1, T0)  # expired first: a sweep that stops at an error reaches nobody else
    claim(c, "broken-2", 1, T0 + 1)
    claim(c, "ok", 1, T0 + 2)
    (retry,) = claim(c, "retrier", 1, T0 + 3)
    c._scripts.requeue(c._redis, worker_id="retrier", jobs=[Requeue("retry", retry.token, "default", "retry", 10)],
                       now_ms=T0 + 3)
    # Poison the scripts do not foresee: these two workers' recovery fails at every pass.
    recover = c._scripts.requeue_expired

    def failing_for_broken(client, *, worker_id, **options):
        if worker_id.startswith("broken"):
            raise redis.ResponseError(f"ERR something unforeseen in {worker_id}'s keys")
        return recover(client, worker_id=worker_id, **options)

    monkeypatch.setattr(c._scripts, "requeue_expired", failing_for_broken)
    monkeypatch.setattr(coordinator_module, "SWEEP_PAGE", 1)  # failing workers would fill a one-worker window
    caplog.set_level(logging.INFO, logger="cwredis.coordinator")
    now = T0 + 2 * LEASE_MS
    assert c.sweep(now_ms=now) == (1, 0, 1)  # "good" requeued, "retry" promoted
    assert state(c, "good") == b"pending" and state(c, "retry") == b"pending"
    assert state(c, "x1") == b"running" and state(c, "x2") == b"running"  # left for a later pass
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "broken-1" in errors[0] and "broken-2" in errors[1], errors
    assert c.sweep(now_ms=now + 1) == (0, 0, 0)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2  # once per worker, not every pass
    monkeypatch.setattr(c._scripts, "requeue_expired", recover)  # the poison is cleaned up
    assert c.sweep(now_ms=now + 2) == (2, 0, 0)
    assert c._redis.llen(KEYS.queue("default")) == 4


def test_settings_wait_while_the_server_is_full_and_the_sweep_goes_on(coordinator):
    c = coordinator
    c._redis.config_set("maxmemory-policy", "noeviction")
    c._redis.config_set("maxmemory", 1)
    try:
        assert c.publish_settings() is False
        assert c.sweep() == (0, 0, 0)
    finally:
        c._redis.config_set("maxmemory", 0)
    assert c.publish_settings() is True
    assert c._redis.hget(KEYS.config, "lease_ms") == str(LEASE_MS).encode()
