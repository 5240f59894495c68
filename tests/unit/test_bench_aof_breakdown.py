"""The AOF breakdown's reader (benchmarks/aof_breakdown.py): the bytes it attributes add up to the file's.

Its numbers go into issue 13's discussion, so a misread command (a wrong
length, a batch counted as another shape) must show here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from aof_breakdown import breakdown, parse_commands  # noqa: E402  (benchmarks/ is not a package)


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _complete(*job_ids: bytes) -> bytes:
    body = b"".join(_resp(b"LREM", b"{cw}:inflight:w1", b"-1", j) + _resp(b"HSET", b"{cw}:job:" + j, b"s", b"done")
                    for j in job_ids)
    return _resp(b"MULTI") + body + _resp(b"EXEC")


def test_sizes_add_up_and_a_batch_of_any_size_is_one_shape() -> None:
    data = (_complete(b"a" * 12) + _complete(b"b" * 12, b"c\r\nd" + b"e" * 8)  # a CRLF inside an argument
            + b"#TS:1796000000\r\n" + _resp(b"LTRIM", b"{cw}:results:c1", b"20", b"-1"))
    commands = parse_commands(data)
    assert [args[0] for args, _ in commands].count(b"LREM") == 3
    assert sum(size for _, size in commands) == len(data) - len(b"#TS:1796000000\r\n")
    shape_bytes, shape_count, kind_bytes, kind_count, field_bytes, _ = breakdown(commands)
    assert shape_count == {"LREM {cw}:inflight | HSET {cw}:job": 2, "LTRIM {cw}:results": 1}
    assert sum(shape_bytes.values()) == sum(kind_bytes.values()) == sum(size for _, size in commands)
    assert kind_count["HSET {cw}:job"] == 3 and kind_count["MULTI"] == 2
    assert field_bytes == {"HSET {cw}:job s": 3 * len(b"$1\r\ns\r\n$4\r\ndone\r\n")}
