"""What the embedded server lets the password do: only the commands cwredis sends.

The password travels to every worker and client, so whoever reads it (a
leaked URL, a node's memory) must not be able to reconfigure the server:
turn off durability (``CONFIG SET appendonly no``), listen everywhere
(``CONFIG SET bind``), add users (``ACL SETUSER``), persist any of that
(``CONFIG REWRITE``), wipe it (``FLUSHALL``), stop it, or watch every command
(``MONITOR``). The server's ``default`` user gets an allow-list instead of
``requirepass``'s everything.

The list is what the roles send -- redis-py calls in ``cwredis/`` and what a
connection sends when it opens (HELLO/AUTH, CLIENT SETNAME/SETINFO, SELECT) --
plus what the Lua scripts in ``cwredis/lua`` call: with ACLs a script's
``redis.call`` is checked against the same user. A role that starts sending a
new command must add it here; the embedded system tests then see it work (a
missing one fails with NOPERM).

Stopping the server needs no privileged user: the coordinator signals the
process it started or adopted (see :mod:`cwredis.server`).
"""

from __future__ import annotations

#: Opening a connection (redis-py's handshake) and keeping it.
CONNECTION = ("auth", "hello", "ping", "select", "echo", "reset", "quit", "client|setname", "client|setinfo")
#: Scripts (every state transition) and their loading.
SCRIPTING = ("evalsha", "eval", "script|load", "script|exists")
#: Reads and writes of the roles outside scripts, and what the scripts call.
DATA = (
    "info", "time", "multi", "exec", "discard", "scan", "exists", "del", "pexpire", "pttl",
    "get", "mget", "set", "incr", "incrby",
    "hset", "hget", "hmget", "hgetall", "hdel", "hincrby",
    "lpush", "rpush", "rpop", "lrange", "llen", "lrem", "ltrim", "lmove", "blmpop", "lmpop",
    "zadd", "zrem", "zcard", "zscore", "zrange", "zrangebyscore", "zpopmin",
    "spublish", "ssubscribe", "sunsubscribe",
)
ALLOWED_COMMANDS = CONNECTION + SCRIPTING + DATA


def default_user_rule(password: str) -> str:
    """The config-file line giving ``password`` every key and channel, but only ALLOWED_COMMANDS."""
    allowed = " ".join(f"+{name}" for name in ALLOWED_COMMANDS)
    return f"user default on >{password} ~* &* -@all {allowed}"
