"""Pickling errors, environment capture, error records, URL resolution (signing: test_signing.py; secrets
and masking: test_trust.py)."""

from __future__ import annotations

import pickle
import threading

import pytest

from cwredis import config
from cwredis.errors import SerializationError
from cwredis.serialization import (ErrorRecord, capture_env, decode_error, dumps_call, dumps_exception,
                                   encode_error, loads_inline_call, parse_env, unframed)
from cwredis.signing import Corrupt


def test_an_unpicklable_argument_is_named():
    def f(x, y):
        return x

    with pytest.raises(SerializationError, match="argument 1") as info:
        dumps_call(f, (1, threading.Lock()), {})
    assert isinstance(info.value, TypeError)
    with pytest.raises(SerializationError, match="'lock'"):
        dumps_call(f, (), {"lock": threading.Lock()})


def test_environment_round_trips_and_garbage_is_corrupt():
    cwd, path = parse_env(capture_env())
    assert cwd and path
    for bad in (b"not json", b"{}", b'{"cwd": 1, "path": []}'):
        with pytest.raises(Corrupt):
            parse_env(bad)


def test_error_records_round_trip_and_garbage_still_decodes():
    assert decode_error(encode_error(ErrorRecord("timeout", "E: x", "tb"))) == ErrorRecord("timeout", "E: x", "tb")
    record = ErrorRecord("exception", "ValueError: v", "tb", *dumps_exception(ValueError("v")))
    assert decode_error(encode_error(record)) == record
    assert decode_error(b"\xff").reason == "corrupt"


def test_url_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CWREDIS_HOME", str(tmp_path))
    monkeypatch.delenv("CWREDIS_URL", raising=False)
    assert config.resolve_url() == config.DEFAULT_URL
    (tmp_path / "url").write_text("redis://file:1/0\n")
    assert config.resolve_url() == "redis://file:1/0"
    monkeypatch.setenv("CWREDIS_URL", "redis://env:1/0")
    assert config.resolve_url() == "redis://env:1/0"
    assert config.resolve_url("redis://arg:1/0") == "redis://arg:1/0"


class _Int(int):
    pass


@pytest.mark.parametrize("args, kwargs", [((1, 2.5, "s", b"b", True, None), {}), ((7,), {"name": "x", "n": 3}),
                                          ((b"z" * (1 << 20),), {})])
def test_a_call_of_plain_values_pickles_as_cloudpickle_would(args, kwargs):
    """Atoms take plain pickle (no cloudpickle set-up per call): the bytes must be cloudpickle's exactly."""
    def f(*a, **k):
        return a

    assert dumps_call(f, args, kwargs) == _cloudpickle_dumps_call(args, kwargs)
    assert loads_inline_call(dumps_call(f, args, kwargs)) == (args, kwargs)


def test_a_call_of_anything_else_still_goes_through_cloudpickle():
    def f(*a):
        return a

    local = lambda: 3  # noqa: E731  (pickled by value: plain pickle cannot)
    data = dumps_call(f, (_Int(4), local), {})
    (number, function), kwargs = loads_inline_call(data)
    assert type(number) is _Int and number == 4 and function() == 3 and kwargs == {}


def _cloudpickle_dumps_call(args, kwargs):
    """dumps_call's format, made with cloudpickle alone (as before the plain-pickle path)."""
    import cloudpickle

    if kwargs:
        return unframed(cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
    return unframed(cloudpickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL), proto=False)
