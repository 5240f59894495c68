"""What travels through Redis besides the signatures: pickled calls, the client's environment, outcomes.

Signing lives in :mod:`cwredis.signing`; this module only turns Python
objects into bytes and back, and frames outcomes.
"""

from __future__ import annotations

import base64
import json
import linecache
import os
import pickle
import sys
import traceback
import types
from typing import Any, Callable, NamedTuple, Sequence

import cloudpickle

from .errors import SerializationError
from .signing import VIEW_BYTES, Corrupt, sliced

#: Kind labels of the shared blobs a signature is made for (a function never passes for an environment).
FUNCTION = b"fn"
ENV = b"env"


def qualified_name(cls: type) -> str:
    """``module.qualname`` of a class (``builtins.OSError``): how retry_on names exception classes."""
    return f"{cls.__module__}.{cls.__qualname__}"


def retry_on_names(types: Sequence[type]) -> tuple[str, ...]:
    """The qualified names a job's spec carries for ``retry_on=``; TypeError for anything but exception classes.

    Names, not pickles: the spec stays plain text that the worker verifies
    and ``cw-admin`` can show without unpickling anything, and the job
    process matches them against the MRO of what was raised, so a class
    need not be importable anywhere but where it is raised.
    """
    if isinstance(types, type):
        types = (types,)
    names = []
    for cls in types:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on takes exception classes, not {_describe(cls)}")
        names.append(qualified_name(cls))
    return tuple(sorted(set(names)))


def is_instance_of_any(exc: BaseException, names: Sequence[str]) -> bool:
    """Whether ``exc``'s class or one of its bases has one of these qualified names."""
    return bool(names) and any(qualified_name(cls) in names for cls in type(exc).__mro__)


def function_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` as ``cw-admin`` shows it (``__main__.square``)."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}.{qualname}"


def _describe(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _pickle_error(what: str, obj: object, exc: BaseException) -> SerializationError:
    return SerializationError(f"cannot pickle {what} {_describe(obj)}: {type(exc).__name__}: {exc}")


#: The file name cloudpickle gives the code it pickles by value.
_DYNAMIC = "<dynamic-code>"

#: Source shipped with a ``__main__`` function only up to this size: a traceback aid, not a payload.
MAX_SHIPPED_SOURCE_BYTES = 512 * 1024


class SourcedFunction(NamedTuple):
    """A function of the client's ``__main__`` (a script, a notebook cell) with its source lines.

    The job process registers ``sources`` (file name -> lines) in ``linecache``
    and gives the function's code back its file name (cloudpickle replaces
    it with ``<dynamic-code>`` to keep pickles deterministic), so a remote
    traceback through it shows its file, lines and source, as a local one
    does, though the file (or notebook cell) exists only on the client.
    """

    function: Callable[..., Any]
    sources: dict[str, list[str]]


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """cloudpickle ``fn`` (with its source, for ``__main__``); SerializationError naming it when that fails."""
    if not callable(fn):
        raise SerializationError(f"cannot submit {_describe(fn)}: it is not callable")
    sources = _main_source(fn)
    try:
        return cloudpickle.dumps(SourcedFunction(fn, sources) if sources else fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise _pickle_error("function", fn, exc) from exc


def loads_function(blob: bytes) -> Callable[..., Any]:
    """Inverse of dumps_function, in the job process: shipped source lines go into ``linecache``."""
    loaded = cloudpickle.loads(blob)
    if isinstance(loaded, SourcedFunction):
        for filename, lines in loaded.sources.items():
            # mtime None: linecache.checkcache keeps the entry (it cannot stat a notebook cell).
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
            _name_main_code(loaded.function, filename, set())
        return loaded.function
    return loaded


def _name_main_code(fn: Any, filename: str, seen: set[int]) -> None:
    """Give ``fn`` and the ``__main__`` functions it reaches (globals, closure) their file name back."""
    code = getattr(fn, "__code__", None)
    if not isinstance(fn, types.FunctionType) or code is None or id(fn) in seen or code.co_filename != _DYNAMIC:
        return
    seen.add(id(fn))
    fn.__code__ = _renamed(code, filename)
    reachable = list(fn.__globals__.values())
    for cell in fn.__closure__ or ():
        try:
            reachable.append(cell.cell_contents)
        except ValueError:  # an empty cell (a name not bound yet)
            pass
    for value in reachable:
        if getattr(value, "__module__", None) == "__main__":
            _name_main_code(value, filename, seen)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _main_source(fn: Callable[..., Any]) -> dict[str, list[str]]:
    """{file name: lines} of the file or cell defining a ``__main__`` function, as the client's linecache has it."""
    code = getattr(fn, "__code__", None)
    if getattr(fn, "__module__", None) != "__main__" or code is None:
        return {}  # importable: the worker has its module's file
    lines = linecache.getlines(code.co_filename)
    if not lines or sum(map(len, lines)) > MAX_SHIPPED_SOURCE_BYTES:
        return {}
    return {code.co_filename: lines}


#: A protocol 4+ pickle's PROTO opcode with its version byte, then its FRAME opcode with its 8-byte length.
_PROTO_LEN, _HEADERS = 2, 11
_FRAME = pickle.FRAME[0]


def unframed(data: bytes, *, proto: bool = True) -> bytes:
    """A pickle made of one frame, without the frame's header: 9 bytes less per stored job; with ``proto``
    False, without its PROTO opcode too (a pickle not starting with PROTO is returned as it is).

    Frames only let a streaming reader fetch a pickle in large reads (PEP 3154);
    an unframed pickle loads the same. Anything else keeps its frames.
    """
    framed = (len(data) > _HEADERS and data[_PROTO_LEN] == _FRAME
              and int.from_bytes(data[_PROTO_LEN + 1:_HEADERS], "little") == len(data) - _HEADERS)
    if proto:
        return data[:_PROTO_LEN] + data[_HEADERS:] if framed else data
    if data[:1] != pickle.PROTO:
        return data
    return data[_HEADERS if framed else _PROTO_LEN:]


#: Types that plain pickle writes byte for byte as cloudpickle does (atoms: no class or function to
#: pickle by value), about ten times faster for a small call: cloudpickle sets up its Pickler in Python
#: on every call, 2-3 us of a no-op job's client time.
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
#: ...but only a str or bytes shorter than this: ``pickle.dumps`` grows its buffer for a large one
#: (1.5 ms for 1 MiB), where cloudpickle's Pickler writes it straight to its file (0.15 ms).
_PLAIN_MAX_LEN = 4096


def _plain(values: Any) -> bool:
    """True if every value is of a plain type and short (see _PLAIN_TYPES)."""
    for value in values:
        kind = type(value)
        if kind not in _PLAIN_TYPES or ((kind is str or kind is bytes) and len(value) >= _PLAIN_MAX_LEN):
            return False
    return True


def dumps_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The call's arguments as a pickle (:func:`loads_inline_call` reads it); on failure, name the argument that
    cannot be pickled.

    A call with keyword arguments is the pickle of ``(args, kwargs)``. Most
    calls have none: theirs is the pickle of ``args`` alone without its PROTO
    opcode, 6 bytes less per queued job (no empty dict, no pair, no header).
    The two cannot be mistaken: every pickle cloudpickle makes starts with
    PROTO, and PROTO is never the opcode after it.
    """
    try:
        dumps = pickle.dumps if _plain(args) and _plain(kwargs.values()) else cloudpickle.dumps
        if not kwargs:
            return unframed(dumps(args, protocol=pickle.HIGHEST_PROTOCOL), proto=False)
        return unframed(dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        for index, arg in enumerate(args):
            try:
                cloudpickle.dumps(arg)
            except Exception as arg_exc:
                raise _pickle_error(f"argument {index} of {function_name(fn)}:", arg, arg_exc) from exc
        for name, arg in kwargs.items():
            try:
                cloudpickle.dumps(arg)
            except Exception as arg_exc:
                raise _pickle_error(f"argument {name!r} of {function_name(fn)}:", arg, arg_exc) from exc
        raise _pickle_error(f"arguments of {function_name(fn)}:", (args, kwargs), exc) from exc


def loads_inline_call(data: bytes | bytearray | memoryview) -> tuple[Any, Any]:
    """Inverse of :func:`dumps_call`: ``(args, kwargs)`` as unpickled (the caller checks their types).
    (:func:`cwredis.argblobs.loads_call` reads a job's arguments, with this for those without blobs.)"""
    if data[:1] == pickle.PROTO:
        return pickle.loads(data)
    # No PROTO: the unpickler would take the pickle for protocol 0 and map Python 2 module names
    # (fix_imports); these names are Python 3's.
    return pickle.loads(data, fix_imports=False), {}


def capture_env() -> bytes:
    """The client's working directory and sys.path, which jobs replay (JSON, never pickle)."""
    return json.dumps({"cwd": os.getcwd(), "path": list(sys.path)}, sort_keys=True).encode()


def parse_env(data: bytes) -> tuple[str, list[str]]:
    """Inverse of capture_env; Corrupt on anything else."""
    try:
        env = json.loads(data)
        cwd, path = env["cwd"], env["path"]
        if not isinstance(cwd, str) or not all(isinstance(p, str) for p in path):
            raise TypeError("wrong types")
    except (ValueError, KeyError, TypeError) as exc:
        raise Corrupt(f"environment record is not valid: {exc}") from None
    return cwd, list(path)


def error_line(exc: BaseException) -> str:
    """Last line of a traceback: ``ValueError: boom``."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


def frame_outcome(output: str, payload: bytes) -> bytes:
    """An outcome body: the job's captured output, then the result or error payload."""
    return b"".join(frame_parts(output, payload))


def frame_parts(output: str, payload: bytes) -> tuple[bytes, ...]:
    """:func:`frame_outcome` in pieces, for :meth:`cwredis.signing.Signer.seal_outcome` to join once with a
    large payload (a small one comes joined already: one piece)."""
    raw = output.encode("utf-8", "replace")
    if len(payload) < VIEW_BYTES:
        return (b"%d\n" % len(raw) + raw + payload,)
    return b"%d\n" % len(raw), raw, payload


def unframe_outcome(body: bytes | memoryview) -> tuple[str, bytes | memoryview]:
    """Inverse of frame_outcome (a large payload a view into ``body``, not a copy: :func:`cwredis.signing.sliced`);
    Corrupt if the framing is broken."""
    head = bytes(body[:24])
    end = head.find(b"\n")
    try:
        n = int(head[:end]) if end >= 0 else -1
    except ValueError:
        raise Corrupt("outcome framing is broken") from None
    rest = sliced(body, end + 1)
    if n < 0 or n > len(rest):
        raise Corrupt("outcome framing is broken")
    return bytes(rest[:n]).decode("utf-8", "replace"), rest[n:]


class ErrorRecord(NamedTuple):
    """A failed job's outcome body: ``exc_type``/``exception`` are the cloudpickles of the raised exception's
    class and of the exception itself (each None when it could not be pickled, or for a non-exception
    failure). Two pickles, so a class survives an instance that does not unpickle (an ``__init__`` that
    needs other arguments than ``args``)."""

    reason: str
    error: str
    traceback: str
    exc_type: bytes | None = None
    exception: bytes | None = None


def dumps_exception(exc: BaseException) -> tuple[bytes | None, bytes | None]:
    """(class, instance) cloudpickled in the job process, each None when it cannot be pickled."""
    return _dumps_or_none(type(exc)), _dumps_or_none(exc)


def _dumps_or_none(obj: object) -> bytes | None:
    try:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # anything at all: a failure to pickle must not hide the job's own error
        return None


def encode_error(record: ErrorRecord) -> bytes:
    """Body of a failed job's outcome entry (JSON; the pickles in base64)."""
    fields: dict[str, str] = {"reason": record.reason, "error": record.error, "traceback": record.traceback}
    for name in ("exc_type", "exception"):
        blob = getattr(record, name)
        if blob is not None:
            fields[name] = base64.b64encode(blob).decode("ascii")
    return json.dumps(fields).encode()


def decode_error(body: bytes | memoryview) -> ErrorRecord:
    """Inverse of encode_error; a garbage body still yields a usable error."""
    body = bytes(body)
    try:
        fields = json.loads(body)
        blobs = [base64.b64decode(fields[name]) if fields.get(name) else None for name in ("exc_type", "exception")]
        return ErrorRecord(str(fields["reason"]), str(fields["error"]), str(fields.get("traceback", "")), *blobs)
    except (ValueError, KeyError, TypeError):
        return ErrorRecord("corrupt", "undecodable error record", repr(body[:200]))
