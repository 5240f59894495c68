"""The embedded server's ACL lets every command the Lua scripts call through (else a role fails at run time)."""

from __future__ import annotations

import re
from importlib import resources

from cwredis import acl


def test_every_command_a_script_calls_is_allowed():
    called = set()
    for script in resources.files("cwredis").joinpath("lua").iterdir():
        if script.name.endswith(".lua"):
            called |= {name.lower() for name in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", script.read_text())}
    assert called, "no redis.call found: the pattern no longer matches the scripts"
    assert called - set(acl.ALLOWED_COMMANDS) == set()
