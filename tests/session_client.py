"""A client in its own process, for tests that kill or interrupt it:
``python tests/session_client.py SESSION QUEUE MARKER_DIR N SECONDS``.

Maps ``helpers.mark_then`` over range(N) (in SESSION, or none if it is ''),
and prints ``RESULTS <json list>`` at the end; the URL comes from
``$CWREDIS_URL``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cwredis  # noqa: E402
import helpers  # noqa: E402

session, queue, markers, n, seconds = sys.argv[1:6]
xs = range(int(n))
with cwredis.Executor(session=session or None, queue=queue) as ex:
    print("SUBMITTING", flush=True)
    results = list(ex.map(helpers.mark_then, [markers] * len(xs), xs, [float(seconds)] * len(xs)))
print("RESULTS " + json.dumps(results), flush=True)
