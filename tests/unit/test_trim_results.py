"""trim_results.lua, on fakeredis[lua] and on a real Valkey server: a client's
trim removes only the entries it read, even where a server restarted from
older data has numbered other outcomes as the ones it delivered."""

from __future__ import annotations

from cwredis.keys import Keys

KEYS = Keys()
CLIENT = "c1"


def header(seq: int, job_id: str) -> bytes:
    return f"{seq}\n{job_id}\n0\n".encode()


def push(r, *entries: tuple[int, str]) -> None:
    """Outcome entries (seq, job id) as complete.lua appends them, and the counter at the last seq."""
    for seq, job_id in entries:
        r.rpush(KEYS.results(CLIENT), header(seq, job_id) + b"ok\nbody-" + job_id.encode())
        r.set(KEYS.result_seq(CLIENT), seq)


def left(r) -> list[bytes]:
    """Headers of the entries still in the list."""
    return [entry[:entry.index(b"\nok\n") + 1] for entry in r.lrange(KEYS.results(CLIENT), 0, -1)]


def trim(s, r, *entries: tuple[int, str], drop_if_empty: bool = False) -> int:
    return s.trim_results(r, client_id=CLIENT, headers=[header(seq, job_id) for seq, job_id in entries],
                          drop_if_empty=drop_if_empty)


def test_trims_the_head_the_client_read(s, r):
    push(r, (1, "a"), (2, "b"), (3, "c"))
    assert trim(s, r, (1, "a"), (2, "b")) == 2
    assert left(r) == [header(3, "c")]


def test_an_entry_numbered_as_one_delivered_before_a_rollback_stays(s, r):
    # Delivered before the server lost its writes: 11 -> job a. Now 11 is job x's, undelivered.
    push(r, (11, "x"), (12, "y"))
    assert trim(s, r, (11, "a"), (12, "y")) == 0
    assert left(r) == [header(11, "x"), header(12, "y")]


def test_a_trim_stops_at_the_first_entry_it_does_not_know(s, r):
    push(r, (1, "a"), (2, "x"), (3, "c"))
    assert trim(s, r, (1, "a"), (2, "b"), (3, "c")) == 1
    assert left(r) == [header(2, "x"), header(3, "c")]


def test_a_stopping_client_with_everything_delivered_leaves_no_list_or_counter(s, r):
    push(r, (1, "a"), (2, "b"))
    assert trim(s, r, (1, "a"), (2, "b"), drop_if_empty=True) == 2
    assert r.exists(KEYS.results(CLIENT), KEYS.result_seq(CLIENT)) == 0


def test_a_stopping_client_keeps_outcomes_it_has_not_delivered(s, r):
    push(r, (1, "a"), (2, "b"))
    assert trim(s, r, (1, "a"), drop_if_empty=True) == 1
    assert left(r) == [header(2, "b")]
    assert r.get(KEYS.result_seq(CLIENT)) == b"2"
