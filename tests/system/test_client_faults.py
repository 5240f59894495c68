"""Client-side faults on real processes (issue 8, fault 8).

2. Leftovers: a stopped client leaves no outcome list or counter behind.
3. A submit of several batches that the server refuses part way: the batches
   already queued are still delivered, the error names the rest.

The client runs in the test process; server, coordinator and workers are
real processes (``tests/conftest.py``).
"""

from __future__ import annotations

import time

import pytest
import redis

import cwredis
import helpers
from cwredis import config
from cwredis.errors import CwredisError
from cwredis.scripts import Scripts
from helpers import Outcomes, start_coordinator

pytestmark = pytest.mark.system


def _client(outcomes: Outcomes, server, **options) -> cwredis.ClientThread:
    return cwredis.ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error, **options)


# ------------------------------------------------------------------ 2. leftovers


def test_stopped_clients_leave_no_outcome_list_or_counter(server, home, procs, keys):
    start_coordinator(procs, server, keys)
    procs.worker(server.url, "--concurrency", "2")
    admin = server.client()
    client_ids = []
    for n in range(30):
        if n % 2:
            with cwredis.Executor(url=server.url) as ex:
                assert list(ex.map(helpers.square, range(3))) == [0, 1, 4]
            client_ids.append(ex.client.client_id)
        else:
            outcomes = Outcomes()
            with _client(outcomes, server) as t:
                expected = {t.submit(helpers.square, i): i * i for i in range(3)}
            outcomes.assert_exactly_once(expected)
            client_ids.append(t.client_id)
    left = [cid for cid in client_ids if admin.exists(keys.results(cid), keys.result_seq(cid))]
    assert not left, f"{len(left)} of {len(client_ids)} stopped clients left an outcome list or counter"


# --------------------------------------------- 3. a multi-batch submit failing part way


def test_submit_refused_part_way_delivers_the_batches_already_queued(server, home, procs, keys, monkeypatch):
    # No coordinator: it runs scripts too, and the server refuses them for a moment here.
    admin = server.client()
    real_submit = Scripts.submit
    calls = []

    def submit_refused_from_the_second_batch(self, client, **kwargs):
        calls.append(len(kwargs["jobs"]))
        if len(calls) == 2:  # the server stops allowing scripts between the first batch and the second
            admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval")
        return real_submit(self, client, **kwargs)

    monkeypatch.setattr(Scripts, "submit", submit_refused_from_the_second_batch)
    outcomes = Outcomes()
    with _client(outcomes, server) as t:
        n = 2 * config.SUBMIT_BATCH + 200
        sealed = [t.submitter.seal_args(helpers.square, (i,), {}) for i in range(n)]
        with pytest.raises((CwredisError, redis.ResponseError)) as refused:
            t.submit_prepared(t.submitter.prepare_function(helpers.square), sealed)
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        assert calls == [config.SUBMIT_BATCH, config.SUBMIT_BATCH], "a batch was sent after the refusal"
        assert t.outstanding == config.SUBMIT_BATCH, "the client forgot the batch already queued"
        assert any(f"{config.SUBMIT_BATCH} of {n} jobs were queued" in note
                   for note in getattr(refused.value, "__notes__", [])), refused.value
        procs.worker(server.url, "--concurrency", "2")
        t.wait(timeout=60)
        time.sleep(0.5)  # room for a late or duplicate callback to show up
    assert admin.llen(keys.queue(config.DEFAULT_QUEUE)) == 0
    assert int(admin.hget(keys.stats, "done") or 0) == config.SUBMIT_BATCH, "jobs of a refused batch ran"
    assert not outcomes.duplicates() and not outcomes.errors
    assert sorted(v for values in outcomes.results.values() for v in values) == \
        [i * i for i in range(config.SUBMIT_BATCH)]
