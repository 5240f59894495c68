"""Job functions for the dashboard and ``cw-admin logs`` tests (importable by workers through the replayed sys.path)."""

from __future__ import annotations

import time

#: Markup that would run script if a page ever put it into the DOM as HTML.
XSS = ('<script>window.__pwned = 1; document.title = "pwned"</script>'
       '<img src=x onerror="window.__pwned = 1; document.title = \'pwned\'">')


def xss_failure() -> None:
    print("output " + XSS)
    raise ValueError("error " + XSS)


def print_sleep_print(seconds: float) -> str:
    print("first line", flush=True)
    time.sleep(seconds)
    print("second line", flush=True)
    time.sleep(1.5)  # the worker writes the output at most every 0.5 s: let it pass the second line on
    return "done"
