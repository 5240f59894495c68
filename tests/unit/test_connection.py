"""Error classification: redis-py's exception classes decide transient or permanent, never message text."""

from __future__ import annotations

import pytest
import redis
from redis._parsers.base import BaseParser

from cwredis.connection import is_server_full, is_transient


def reply_error(line: str) -> redis.exceptions.RedisError:
    """The exception redis-py raises for an error reply ``line`` (the server's ``-`` line, without the dash)."""
    exc = BaseParser.parse_error(line)
    assert isinstance(exc, redis.exceptions.RedisError)
    return exc


TRANSIENT = [
    "OOM command not allowed when used memory > 'maxmemory'.",
    "OOM command not allowed when used memory > 'maxmemory'. script: 9db92ec9a5, on @user_script:1.",
    "READONLY You can't write against a read only replica.",
    "LOADING Valkey is loading the dataset in memory",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN The cluster is down",
    "NOSCRIPT No matching script.",
    "BUSY Valkey is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MISCONF Errors writing to the AOF file: No space left on device",
    "NOREPLICAS Not enough good replicas to write.",
    "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "MOVED 3999 127.0.0.1:6381",  # a cluster slot moved: the next connection follows (cwredis.cluster)
    "ASK 3999 127.0.0.1:6381",
]

PERMANENT = [
    "WRONGTYPE Operation against a key holding the wrong kind of value script: b972be8a, on @user_script:2.",
    "NOPERM User default has no permissions to run the 'eval' command",
    "ERR unknown command 'FOO', with args beginning with: ",
    "user_script:3: x script: ca5e1e31, on @user_script:3.",
    "ERR Error compiling script (new function): user_script:1: unexpected symbol near '#'",
    "CROSSSLOT Keys in request don't hash to the same slot",  # a namespace's keys share a hash tag
    "EXECABORT Transaction discarded because of previous errors.",
    "BUSYKEY Target key name already exists.",
]


@pytest.mark.parametrize("line", TRANSIENT)
def test_replies_meaning_away_busy_or_full_for_now_are_transient(line):
    assert is_transient(reply_error(line))


@pytest.mark.parametrize("line", PERMANENT)
def test_other_error_replies_are_permanent(line):
    assert not is_transient(reply_error(line))


def test_redis_py_8_strips_the_oom_code_and_the_class_still_says_full():
    exc = reply_error("OOM command not allowed when used memory > 'maxmemory'.")
    assert not str(exc).startswith("OOM")  # why no check may read the text
    assert is_server_full(exc) and is_transient(exc)


@pytest.mark.parametrize("line", TRANSIENT[2:] + PERMANENT)
def test_only_oom_means_server_full(line):
    assert not is_server_full(reply_error(line))


@pytest.mark.parametrize("exc", [redis.ConnectionError("reset"), redis.TimeoutError("timed out")])
def test_lost_connections_and_timeouts_are_transient(exc):
    assert is_transient(exc) and not is_server_full(exc)


def test_errors_not_from_redis_are_permanent():
    assert not is_transient(ValueError("OOM"))


@pytest.mark.parametrize("line", TRANSIENT + PERMANENT)
def test_a_reply_error_from_a_pipeline_is_classified_by_its_code_too(line):
    exc = reply_error(line)
    # As redis-py raises it from a pipeline: the command and its position put before the reply.
    redis.client.Pipeline.annotate_exception(None, exc, 1, ("EVALSHA", "e3f0d7", 2, "cw:workers", "w1"))
    assert str(exc).startswith("Command # 1 (EVALSHA e3f0d7 2 cw:workers w1) of pipeline caused error: ")
    assert is_transient(exc) == (line in TRANSIENT)


def test_pinned_and_subscription_connections_made_anew_after_each_outage_never_run_out(server):
    """Each outage (a failover, a restart) makes them open a new connection: they are not counted
    against the pool's limit (100; 3 here, so that a few reconnects show it)."""
    from cwredis.connection import Pinned, Subscription, connect

    client = connect(server.url, "test")
    client.connection_pool.max_connections = 3
    pinned = Pinned(client)
    for _ in range(6):
        assert pinned.execute("PING") == b"PONG"
        pinned.close()  # as an error would drop it
    for _ in range(6):
        Subscription(client, "cw-test-channel").close()
    assert client.ping()
    client.close()
