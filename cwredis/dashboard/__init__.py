"""``cw-admin dashboard``: a live web view of a cwredis and a Prometheus ``/metrics`` endpoint.

Modules, each small:

``views``     reads Redis for a page, a bounded number of commands whatever the number of jobs
``sessions``  session progress kept up to date a bounded number of reads at a time
``sampler``   one background read per second: the overview and its 10-minute throughput history
``metrics``   a ``prometheus_client`` collector reading Redis at scrape time
``auth``      the access token, its cookie, the CSRF token and the security headers
``app``       the Starlette routes (JSON for the page, static files, actions as POSTs)
``serve``     what ``cw-admin dashboard`` runs: resolve, bind, print the URL, serve until Ctrl-C

The pages are static files (``static/``): no Redis data is ever put into
HTML on the server. The browser fetches JSON and builds the DOM with
``textContent``, so a job's error or output is shown as text, whatever it holds.

Needs the ``dashboard`` extra (Starlette, uvicorn, prometheus_client);
:mod:`cwredis.admin_dashboard` says how to install it when it is missing.
"""
