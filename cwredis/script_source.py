"""The text each script is sent as: ``lua/<name>.lua`` after the prelude, with or without its flags line.

**Script flags.** Each ``lua/<name>.lua`` declares on its first line the
flags it runs with (``--!flags allow-oom``, or ``--!flags`` for none), and
the text sent to the server starts with the matching ``#!lua flags=...``
line (Redis/Valkey >= 7), before the prelude. A script with that line and
without ``allow-oom`` is refused as a whole -- nothing of it runs -- while the
server is over its ``maxmemory``: so is submit.lua, and a submit raises
ServerFullError with nothing half-queued. Every other transition is
``allow-oom``: claims, lease renewals, outcomes and requeues must go on at
the limit, or the cluster could never drain. Redis 6.2 knows no such line
(its Lua compiler rejects it); there the scripts are loaded without it, and a
script is refused at the limit only when its first write is a deny-oom
command, as before flags existed: submits may then write past the limit, and
claims and lease renewals may be refused until memory is freed (the roles
retry them). Which form a server takes is asked once, by :meth:`Scripts.load`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

#: Run once by Scripts.load: a server that answers 1 takes script flags.
FLAGS_PROBE = "#!lua flags=no-writes\nreturn 1"
#: How a script file declares its flags, on its first line.
FLAGS_DECLARATION = "--!flags"


@dataclass(frozen=True)
class Source:
    """One script's text in both forms (see the module docstring), and their SHA1s."""

    flagged: str  # '#!lua flags=...' line, prelude, script
    plain: str  # prelude, script: for servers without script flags

    def text(self, flagged: bool) -> str:
        return self.flagged if flagged else self.plain

    def sha(self, flagged: bool) -> str:
        return hashlib.sha1(self.text(flagged).encode()).hexdigest()


@functools.cache
def source(name: str) -> Source:
    """``lua/<name>.lua`` with the prelude, in both forms; ValueError if it declares no flags."""
    lua = resources.files("cwredis").joinpath("lua")
    script = lua.joinpath(f"{name}.lua").read_text()
    first_line = script.split("\n", 1)[0]
    if not first_line.startswith(FLAGS_DECLARATION):
        raise ValueError(f"lua/{name}.lua must declare its script flags on its first line "
                         f"({FLAGS_DECLARATION} allow-oom, or {FLAGS_DECLARATION} for none)")
    flags = first_line[len(FLAGS_DECLARATION):].split()
    shebang = f"#!lua flags={','.join(flags)}" if flags else "#!lua"
    plain = lua.joinpath("_prelude.lua").read_text() + script
    return Source(flagged=f"{shebang}\n{plain}", plain=plain)
