"""What the worker's fetcher does with one read of its inbox (no Redis needed: the steps are recorded)."""

from __future__ import annotations

from cwredis.worker import Worker


def frame(*fields: bytes) -> bytes:
    """A hand-off message as frame() in _prelude.lua builds it."""
    return b"".join(b"%d:%s" % (len(f), f) for f in fields)


def test_jobs_read_together_with_a_wake_are_taken_before_the_claim(monkeypatch):
    worker = Worker("redis://127.0.0.1:1/0")  # never connects: the steps below are recorded instead
    steps: list[tuple] = []
    monkeypatch.setattr(worker, "_take_jobs", lambda claimed, garbled, epoch: steps.append(
        ("take", [c.id for c in claimed], garbled, epoch)))
    monkeypatch.setattr(worker, "_claim_now", lambda: steps.append(("claim",)) or False)
    job = frame(b"j1", b"1", b"sp", b"fn", b"Uargs", b"1", b"0")
    worker._take_handed([job, b"wake", b"garbage"], epoch=7)
    assert steps == [("take", ["j1"], 1, 7), ("claim",)]


def test_a_wake_alone_claims(monkeypatch):
    worker = Worker("redis://127.0.0.1:1/0")
    steps: list[str] = []
    monkeypatch.setattr(worker, "_take_jobs", lambda *a: steps.append("take"))
    monkeypatch.setattr(worker, "_claim_now", lambda: steps.append("claim") or False)
    worker._take_handed([b"wake"], epoch=0)
    assert steps == ["claim"]
