"""What each job costs in the append-only file, command by command (issue 13).

``python benchmarks/aof_breakdown.py [--n 20000]`` starts a stack like
``run.py``'s ``aof`` benchmark (a server with ``appendonly yes``,
``appendfsync everysec``; a coordinator; the default worker layout), runs
the ``executor_map`` role once, and reads what the run appended to the
AOF's increment file. Scripts are replicated as their effects, each script
call a ``MULTI`` ... ``EXEC`` block, so a block's shape (the kinds of
command and key it holds, each once, so a batch of any size has one shape)
names the transition that wrote it: submit, claim, complete, the client's
collection, a heartbeat. Printed: bytes per job by block shape, by command
and key kind, and by hash field, with counts. ``--save`` keeps the bytes,
``--read`` breaks down a saved file again without a run.

Automatic AOF rewrites are switched off for the run (``CONFIG SET
auto-aof-rewrite-percentage 0``): a rewrite would start a new increment
file mid-run; it does not change what each command appends.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

#: Job ids (12 url-safe characters) and other ids inside key names, folded so keys group by kind.
_KEY_KIND = re.compile(r"^(\{[^}]*\}:[a-z]+)")


def parse_commands(data: bytes) -> list[tuple[list[bytes], int]]:
    """The commands in ``data`` (RESP multibulk, as the AOF holds them), each with its size in bytes."""
    out = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 1] == b"#":  # an annotation line (aof-timestamp-enabled)
            pos = data.index(b"\r\n", pos) + 2
            continue
        start = pos
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1:end])
        pos = end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            length = int(data[pos + 1:end])
            pos = end + 2
            args.append(data[pos:pos + length])
            pos += length + 2
        out.append((args, pos - start))
    return out


def key_kind(key: bytes) -> str:
    text = key.decode(errors="replace")
    match = _KEY_KIND.match(text)
    return match.group(1) if match else text


def command_kind(args: list[bytes]) -> str:
    name = args[0].decode().upper()
    if name in ("MULTI", "EXEC", "SELECT") or len(args) < 2:
        return name
    return f"{name} {key_kind(args[1])}"


def breakdown(commands: list[tuple[list[bytes], int]]) -> tuple[Counter, Counter, Counter, Counter, Counter, dict]:
    """Bytes and counts by block shape, bytes by command kind, bytes by hash field written; a sample of each shape."""
    shape_bytes: Counter = Counter()
    shape_count: Counter = Counter()
    kind_bytes: Counter = Counter()
    kind_count: Counter = Counter()
    field_bytes: Counter = Counter()
    samples: dict[str, list[list[bytes]]] = {}
    block: list[str] = []
    raw: list[list[bytes]] = []
    block_bytes = 0
    in_block = False
    for args, size in commands:
        kind = command_kind(args)
        kind_bytes[kind] += size
        kind_count[kind] += 1
        name = kind.split(" ")[0]
        if name in ("HSET", "HMSET", "HSETNX") and len(args) >= 4:
            for field, value in zip(args[2::2], args[3::2]):
                # field and value as RESP bulk strings: $len\r\n...\r\n each
                cost = len(field) + len(value) + len(str(len(field))) + len(str(len(value))) + 10
                field_bytes[f"{kind} {field.decode(errors='replace')}"] += cost
        if name == "MULTI":
            in_block, block, raw, block_bytes = True, [], [], size
            continue
        if in_block:
            block_bytes += size
            if name == "EXEC":
                shape = " | ".join(dict.fromkeys(block))  # a batch of any size: each kind once, in order
                shape_bytes[shape] += block_bytes
                shape_count[shape] += 1
                samples.setdefault(shape, raw)
                in_block = False
            else:
                block.append(kind)
                raw.append(args)
            continue
        shape_bytes[kind] += size  # a command outside a script (a client's own MULTI-less write)
        shape_count[kind] += 1
        samples.setdefault(kind, [args])
    return shape_bytes, shape_count, kind_bytes, kind_count, field_bytes, samples


def increment_file(data_dir: Path) -> Path:
    files = sorted(data_dir.rglob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"no increment file under {data_dir}")
    return files[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="jobs in the map (default 20000)")
    ap.add_argument("--top", type=int, default=25, help="rows per table")
    ap.add_argument("--samples", action="store_true", help="also print one block of each shape, arguments cut short")
    ap.add_argument("--save", metavar="FILE", help="also write what the run appended to the AOF to FILE")
    ap.add_argument("--read", metavar="FILE", help="no run: break down a file --save wrote (of a run of --n jobs)")
    mine = ap.parse_args()
    if mine.read:
        data = Path(mine.read).read_bytes()
        print(f"{mine.read}: {len(data):,} B appended by a run of {mine.n} jobs (+50 warm-up)")
        report(data, mine.n + 50, mine)
        return 0
    import run  # here, not above: it puts tests/ on sys.path for the harness; the parser needs neither
    from stack import Stack

    opts = run.parse_args([])
    opts.runs = 1
    with Stack(opts, aof=True, workers=(opts.workers, opts.concurrency)) as st:
        r = st.server.client()
        r.config_set("auto-aof-rewrite-percentage", 0)
        time.sleep(2.0)
        path = increment_file(st.server.dir / "appendonlydir")
        info0, offset = r.info("persistence")["aof_current_size"], path.stat().st_size
        res = st.client("executor_map", {"n": mine.n, "warmup": 50}, timeout=900)
        time.sleep(2.0)  # everysec: the last second's writes reach the file
        info1 = r.info("persistence")["aof_current_size"]
        if increment_file(st.server.dir / "appendonlydir") != path:
            raise RuntimeError("the AOF was rewritten during the run; the breakdown would miss part of it")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    if mine.save:
        Path(mine.save).write_bytes(data)
    jobs = mine.n + 50
    print(f"executor_map n={mine.n} (+50 warm-up): {res.get('jobs_per_s', 0):,.0f} jobs/s; "
          f"aof_current_size grew {info1 - info0:,} B = {(info1 - info0) / jobs:,.1f} B/job; "
          f"increment file grew {len(data):,} B")
    report(data, jobs, mine)
    return 0


def report(data: bytes, jobs: int, mine: argparse.Namespace) -> None:
    """Print the tables for ``data``, per job of ``jobs``."""
    shape_bytes, shape_count, kind_bytes, kind_count, field_bytes, samples = breakdown(parse_commands(data))
    total = sum(kind_bytes.values())
    print(f"\nby script call (MULTI ... EXEC block shape): B/job, calls/job, B/call   [{total / jobs:,.1f} B/job]")
    for shape, b in shape_bytes.most_common(mine.top):
        print(f"  {b / jobs:8.1f}  {shape_count[shape] / jobs:6.3f}  {b / shape_count[shape]:8.1f}  {shape}")
    print("\nby command and key kind: B/job, commands/job, B/command")
    for kind, b in kind_bytes.most_common(mine.top):
        print(f"  {b / jobs:8.1f}  {kind_count[kind] / jobs:6.3f}  {b / kind_count[kind]:8.1f}  {kind}")
    print("\nhash fields written (field + value as sent): B/job")
    for field, b in field_bytes.most_common(mine.top):
        print(f"  {b / jobs:8.1f}  {field}")
    if mine.samples:
        print("\none block of each shape (arguments over 60 bytes cut short, with their length):")
        for shape, _ in shape_bytes.most_common(mine.top):
            print(f"  -- {shape}")
            for args in samples[shape][:16]:
                print("     " + " ".join(repr(a[:60]) + (f"..({len(a)})" if len(a) > 60 else "") for a in args))


if __name__ == "__main__":
    sys.exit(main())
