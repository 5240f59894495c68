"""Text from Redis made safe for a terminal: control characters shown escaped.

Anyone who can write to Redis chooses job ids, function names, queue names,
errors, tracebacks and captured output; printed raw, an ESC sequence in one
of them can clear the screen, rewrite what was printed before, retitle the
window or, on some terminals, inject input. ``cw-admin`` passes everything it
prints from Redis through :func:`printable` (its ``--json`` output is escaped
by ``json.dumps`` already).
"""

from __future__ import annotations

#: C0 controls, DEL and C1 controls, each spelled ``\\xNN``.
_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
#: The same, keeping line feeds (a traceback's or an output's lines).
_ESCAPES_MULTILINE = {code: text for code, text in _ESCAPES.items() if code != ord("\n")}


def printable(text: object, multiline: bool = False) -> str:
    """``str(text)`` with every C0/C1 control character and DEL escaped as ``\\xNN``
    (ESC becomes ``\\x1b``); with ``multiline``, line feeds are kept."""
    return str(text).translate(_ESCAPES_MULTILINE if multiline else _ESCAPES)
