"""Large arguments and results (issue 13): intact both ways, repeated ones stored once, a map's memory bounded.

Real server, coordinator and workers; Redis memory is read with ``INFO memory``.
No timings: speed is measured by ``benchmarks/run.py --only large_args large_results``.
"""

from __future__ import annotations

import array
import hashlib
import threading

import pytest

import cwredis
import jobs_payloads
from cwredis import config
from cwredis.errors import RemoteError
from cwredis.keys import DEFAULT_KEYS
from helpers import wait_for
from sysutil import unique

pytestmark = pytest.mark.system

MIB = 1 << 20
JOB_TIMEOUT_S = 60


def used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def large_blobs(r) -> set[bytes]:
    """The blob records of a megabyte or more (argument blobs: function blobs are small)."""
    return {k for k in r.scan_iter(match=DEFAULT_KEYS.blob("*")) if (r.hstrlen(k, "b") or 0) >= MIB}


def expected(payload) -> tuple:
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    return type(payload).__name__, len(data), hashlib.sha256(data).hexdigest()


def test_large_arguments_and_results_cross_intact(cluster):
    """bytes, bytearray, array.array and str of 1 MiB each way, each distinct: what the job got, and what
    came back, is exactly what was sent."""
    payloads = [bytes(range(256)) * 4096, bytearray(b"\x01\x02\x03\x04") * (MIB // 4),
                array.array("d", range(MIB // 8)), "x\u00e9" * (MIB // 3)]
    with cwredis.Executor(url=cluster.url) as ex:
        got = list(ex.map(jobs_payloads.fingerprint, payloads, range(len(payloads)), timeout=JOB_TIMEOUT_S))
        back = list(ex.map(jobs_payloads.echo, payloads, timeout=JOB_TIMEOUT_S))
    assert [g[:3] for g in got] == [expected(p) for p in payloads]
    assert [g[3] for g in got] == list(range(len(payloads)))
    assert back == payloads and [type(b) for b in back] == [type(p) for p in payloads]


def test_large_results_are_staged_delivered_once_and_leave_nothing_behind(cluster):
    """Large results (staged beside complete.lua, their entries naming the key) from a map and from
    ClientThread callbacks: each arrives once and intact, and once the clients have stopped no staged
    body is left in Redis (the client deletes each as it trims the entry naming it)."""
    r = cluster.redis
    staged_before = set(r.scan_iter(match=DEFAULT_KEYS.staged_body("*", "*")))
    bodies_read_before = r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
    with cwredis.Executor(url=cluster.url) as ex:
        back = list(ex.map(jobs_payloads.echo, [bytes([i]) * MIB for i in range(12)], timeout=JOB_TIMEOUT_S))
    assert back == [bytes([i]) * MIB for i in range(12)]
    results: dict[str, list[bytes]] = {}
    with cwredis.ClientThread(lambda job_id, value: results.setdefault(job_id, []).append(value),
                              url=cluster.url) as client:
        ids = {client.submit(jobs_payloads.echo, bytes([i]) * (MIB // 2)): i for i in range(6)}
        client.wait(timeout=JOB_TIMEOUT_S)
    assert {job_id: [bytes([i]) * (MIB // 2)] for job_id, i in ids.items()} == results
    assert set(r.scan_iter(match=DEFAULT_KEYS.staged_body("*", "*"))) == staged_before
    # The clients read the bodies from their keys (MGET, which only that does): they were staged.
    assert r.info("commandstats")["cmdstat_mget"]["calls"] > bodies_read_before


def test_a_repeated_large_argument_is_stored_once(cluster, procs):
    """50 queued jobs with the same 1 MiB argument take about 3 MiB of Redis (the first two jobs carry it,
    one blob serves the other 48), not 50; each job still gets it intact."""
    queue = unique("dedup")
    big = hashlib.sha256(queue.encode()).digest() * (MIB // 32)  # content of this test's own
    r = cluster.redis
    before, blobs_before = used_memory(r), large_blobs(r)
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        futures = [ex.submit(jobs_payloads.fingerprint, big, i) for i in range(50)]
        grown = used_memory(r) - before
        assert grown < 5 * MIB, f"50 jobs of one 1 MiB argument took {grown / MIB:.1f} MiB of Redis"
        blobs = large_blobs(r) - blobs_before
        assert len(blobs) == 1 and r.pttl(blobs.pop()) > 0  # one blob, which expires
        procs.worker(cluster.url, "--queue", queue)
        results = [f.result(JOB_TIMEOUT_S) for f in futures]
    assert [res[:3] for res in results] == [expected(big)] * 50
    assert [res[3] for res in results] == list(range(50))


def test_a_missing_argument_blob_fails_its_job_corrupt_at_once(cluster, procs):
    """The blob expired (or the server lost it) before the job ran: the job fails ``corrupt`` at once,
    it never waits; the first two jobs, which carried the argument themselves, are unaffected."""
    queue = unique("lostblob")
    big = hashlib.sha256(queue.encode()).digest() * (MIB // 32)
    r = cluster.redis
    blobs_before = large_blobs(r)
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        inline = [ex.submit(jobs_payloads.fingerprint, big, i) for i in (1, 2)]
        third = ex.submit(jobs_payloads.fingerprint, big, 3)
        blobs = large_blobs(r) - blobs_before
        assert len(blobs) == 1
        r.delete(blobs.pop())
        procs.worker(cluster.url, "--queue", queue)
        assert [f.result(JOB_TIMEOUT_S)[:3] for f in inline] == [expected(big)] * 2
        with pytest.raises(RemoteError) as raised:
            third.result(JOB_TIMEOUT_S)
    assert raised.value.reason == "corrupt"
    assert "argument blob" in str(raised.value)


def test_redis_memory_of_a_map_stays_within_its_byte_window(cluster, procs, monkeypatch):
    """A map of 40 distinct 1 MiB arguments with an 8 MiB window: with no worker, only the window is
    queued; while a worker drains it, Redis never holds more than window + one batch + slack."""
    monkeypatch.setattr(config, "MAP_WINDOW_BYTES", 8 * MIB)
    monkeypatch.setattr(config, "SUBMIT_BATCH_BYTES", 2 * MIB)
    # window, one batch, slack: outcomes, the allocator, and a claim's reply (a few 1 MiB jobs) in
    # the server's output buffer -- far below the 40 MiB the map would queue without its byte window
    bound = (8 + 2 + 8) * MIB
    queue = unique("window")
    r = cluster.redis
    before = used_memory(r)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], used_memory(r) - before)
            stop.wait(0.02)

    payloads = (i.to_bytes(4, "little") * (MIB // 4) for i in range(40))
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        results = ex.map(jobs_payloads.fingerprint, payloads, range(40), timeout=JOB_TIMEOUT_S)
        queued = used_memory(r) - before
        assert 7 * MIB < queued < bound, f"{queued / MIB:.1f} MiB queued before any worker"
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            procs.worker(cluster.url, "--queue", queue)
            got = list(results)
        finally:
            stop.set()
            sampler.join()
    assert [g[3] for g in got] == list(range(40))
    assert [g[:3] for g in got] == [expected(i.to_bytes(4, "little") * (MIB // 4)) for i in range(40)]
    assert peak[0] < bound, f"Redis grew by {peak[0] / MIB:.1f} MiB during the map"


def staged_args_keys(r) -> set[bytes]:
    return set(r.scan_iter(match=DEFAULT_KEYS.staged_args("*"), count=1000))


def test_large_arguments_are_staged_beside_their_jobs_and_leave_nothing_behind(cluster):
    """Distinct 1 MiB arguments from a map, and 512 KiB ones from lone jobs one after another (each handed
    to a job process parked on its own inbox): every job gets its own arguments intact, once. They were
    written with a plain SET each (staged, not through submit.lua), and once the jobs are done none is
    left in Redis."""
    r = cluster.redis
    keys_before = staged_args_keys(r)
    sets_before = r.info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    payloads = [bytes([i]) * MIB for i in range(12)]
    with cwredis.Executor(url=cluster.url) as ex:
        got = list(ex.map(jobs_payloads.fingerprint, payloads, range(12), timeout=JOB_TIMEOUT_S))
    assert got == [(*expected(p)[:3], i) for i, p in enumerate(payloads)]
    results: dict[str, list[tuple]] = {}
    with cwredis.ClientThread(lambda job_id, value: results.setdefault(job_id, []).append(value),
                              url=cluster.url) as client:
        ids = {}
        for i in range(4):
            ids[client.submit(jobs_payloads.fingerprint, bytes([100 + i]) * (MIB // 2), i)] = i
            client.wait(timeout=JOB_TIMEOUT_S)
    assert results == {job_id: [(*expected(bytes([100 + i]) * (MIB // 2))[:3], i)] for job_id, i in ids.items()}
    assert r.info("commandstats")["cmdstat_set"]["calls"] >= sets_before + 16
    assert staged_args_keys(r) == keys_before


def test_a_job_whose_staged_arguments_are_gone_fails_corrupt_at_once(cluster, procs):
    """The key expired (or the server lost it) before the job ran: the job fails ``corrupt`` at once,
    saying why; it never waits, and the job beside it runs."""
    queue = unique("lostargs")
    r = cluster.redis
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        kept, lost = (ex.submit(jobs_payloads.fingerprint, bytes([i]) * MIB, i) for i in (1, 2))
        assert r.delete(DEFAULT_KEYS.staged_args(lost.job_id)) == 1
        procs.worker(cluster.url, "--queue", queue)
        assert kept.result(JOB_TIMEOUT_S) == (*expected(bytes([1]) * MIB)[:3], 1)
        with pytest.raises(RemoteError) as raised:
            lost.result(JOB_TIMEOUT_S)
    assert raised.value.reason == "corrupt"
    assert "arguments are missing" in str(raised.value)


def test_staged_arguments_swapped_for_another_jobs_are_never_run(cluster, procs):
    """Someone with write access to Redis but not the secret puts job A's (signed) arguments in job B's
    key: B is rejected -- opened neither by its job process nor by the worker -- and never runs with A's
    arguments; A runs as sent."""
    queue = unique("swapped")
    r = cluster.redis
    with cwredis.Executor(url=cluster.url, queue=queue, max_attempts=1) as ex:
        a, b = (ex.submit(jobs_payloads.fingerprint, bytes([i]) * MIB, i) for i in (1, 2))
        assert r.set(DEFAULT_KEYS.staged_args(b.job_id), r.get(DEFAULT_KEYS.staged_args(a.job_id)), keepttl=True)
        procs.worker(cluster.url, "--queue", queue)
        assert a.result(JOB_TIMEOUT_S) == (*expected(bytes([1]) * MIB)[:3], 1)
        with pytest.raises(RemoteError) as raised:
            b.result(JOB_TIMEOUT_S)
    assert raised.value.reason == "rejected"
