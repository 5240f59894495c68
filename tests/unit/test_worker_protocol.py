"""The worker/child pipes (cwredis.worker.protocol.MessagePipe): every message comes out as it went in, its
type and every field, though it travels as a plain tuple."""

from __future__ import annotations

import os
import threading

from cwredis.worker.protocol import (Direct, Err, MessagePipe, Ok, Output, Progress, Recorded, Resend, Run, Setup,
                                     Stale, Unsend, Unsent)

MESSAGES = [
    Setup("redis://127.0.0.1:1/0", b"secret", "cw", "w1", ["default", "gpu"]),
    Run("j1", "fn", b"FUNCTION", b"ARGS", "env", None, True, Direct("7", 2, "c1", True, only_large=True),
        ("ValueError",), {"d1": b"BLOB"}, 0),
    Run("j2", "fn", None, b"", "env", b"{}", False, None, args_follow=1 << 20),
    Unsend("j1"), Progress("j1", 0.5, None), Output("j1", "printed\n"), Unsent("j1", True), Resend("j1"),
    Stale("j1", "/x.py"), Ok("j1", b"R" * (1 << 20), "out"),
    Err("j1", "exception", "ValueError: x", "Traceback...", "", b"TYPE", None, True), Recorded("j1", False, 3),
]


def test_every_message_crosses_with_its_type_and_fields():
    r, w = os.pipe()
    reader, writer = MessagePipe(r, writable=False), MessagePipe(w, readable=False)
    sender = threading.Thread(target=lambda: [writer.send(m) for m in MESSAGES])  # the 1 MiB one fills the pipe
    sender.start()
    try:
        got = [reader.recv() for _ in MESSAGES]
    finally:
        sender.join(10)
        reader.close()
        writer.close()
    assert got == MESSAGES  # (NamedTuples compare as tuples: the types are checked apart)
    assert [type(m) for m in got] == [type(m) for m in MESSAGES]
    assert type(got[1].direct) is Direct and got[1].direct.only_large
