"""Client-side faults on real processes (issue 8, fault 8).

Leftovers: a stopped client leaves no outcome list or counter behind.

The client runs in the test process; server, coordinator and workers are
real processes (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest

import cwredis
import helpers
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
