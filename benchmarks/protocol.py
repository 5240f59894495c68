"""How a client program reports to ``run.py``: one tagged JSON line on stdout.

``@@EVENT {...}`` tells the parent something happened mid-run (``scale``
starts its workers when the client says the jobs are submitted);
``@@RESULT {...}`` is the measurement. Anything else on stdout is ignored.
"""

from __future__ import annotations

import json
import sys

EVENT = "EVENT"
RESULT = "RESULT"
_PREFIX = "@@"


def emit(kind: str, payload: dict) -> None:
    """Write one ``@@KIND {json}`` line to stdout and flush it (client side)."""
    sys.stdout.write(f"{_PREFIX}{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def parse(raw: bytes) -> tuple[str | None, dict]:
    """(kind, payload) of one stdout line (parent side); (None, {}) for any other line."""
    line = raw.decode("utf-8", "replace").rstrip("\n")
    if not line.startswith(_PREFIX):
        return None, {}
    kind, _, payload = line[len(_PREFIX):].partition(" ")
    if kind not in (EVENT, RESULT):
        return None, {}
    return kind, json.loads(payload)
