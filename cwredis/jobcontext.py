"""What a running job can call: ``cwredis.progress(fraction, message)`` and ``cwredis.current_job_id()``.

The child process installs a reporter for the job it runs; outside a job
(e.g. when the function is called locally while testing) both are harmless.
"""

from __future__ import annotations

import math
from typing import Callable

_job_id: str | None = None
_report: Callable[[str, float, str | None], None] | None = None


def current_job_id() -> str | None:
    """The id of the job this code runs in, or None outside cwredis."""
    return _job_id


def progress(fraction: float, message: str | None = None) -> None:
    """Report how far the current job is (0.0 .. 1.0), optionally with a short message.

    The submitting client's ``progress_callback(jobid, fraction, message)``
    gets it, and ``cw-admin show`` displays the latest. Outside a job: no-op.
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"progress fraction must be a number, not {fraction!r}") from None
    if math.isnan(value):
        raise ValueError("progress fraction must not be NaN")
    if _report is not None and _job_id is not None:
        _report(_job_id, min(1.0, max(0.0, value)), None if message is None else str(message)[:200])


def _enter(job_id: str, report: Callable[[str, float, str | None], None]) -> None:
    global _job_id, _report
    _job_id, _report = job_id, report


def _leave() -> None:
    global _job_id, _report
    _job_id, _report = None, None
