"""The coordinator, one pass at a time, on a real server."""

from __future__ import annotations

import pytest

from cwredis.coordinator import Coordinator
from cwredis.keys import Keys

KEYS = Keys()
LEASE_MS = 30_000


@pytest.fixture
def coordinator(server):
    c = Coordinator(server.url, lease_s=LEASE_MS / 1000)
    yield c
    c._redis.close()


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
