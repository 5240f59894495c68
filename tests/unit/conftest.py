"""Fixtures of the script tests: each runs on fakeredis[lua] and on a real Valkey server."""

from __future__ import annotations

import fakeredis
import pytest

from cwredis.keys import Keys
from cwredis.scripts import Scripts


@pytest.fixture(params=["fakeredis", "valkey"])
def r(request):
    """An empty server: fakeredis, or the harness's real one."""
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis()
    else:
        client = request.getfixturevalue("server").client()
    client.flushall()
    return client


@pytest.fixture
def s(r):
    """The scripts, registered on ``r``, under the default key namespace."""
    return Scripts(r, Keys())
