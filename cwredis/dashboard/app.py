"""The dashboard's routes (Starlette).

``GET /``                 the page (static HTML; the browser fetches everything else)
``GET /static/...``       its script and style sheet
``GET /api/session``      the CSRF token the page sends with its POSTs
``GET /api/overview``     the sampler's latest overview and throughput history (no Redis read)
``GET /api/running``      a page of running jobs (``?offset=&limit=``)
``GET /api/failed``       a page of failed jobs, the latest first
``GET /api/workers``      live workers
``GET /api/job/{id}``     one job, with its output and traceback
``POST /api/{action}``    ``requeue``, ``purge`` or ``cancel`` the jobs named in ``{"ids": [...]}``
``GET /metrics``          Prometheus text format

GETs change nothing. Handlers are plain functions: Starlette runs them in its
thread pool, where the blocking Redis calls belong. A Redis that cannot be
reached is a 503 naming the cause (the URL's password masked by
:func:`~cwredis.connection.describe`), never a traceback.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..admin_sessions import UserError
from ..connection import describe
from .auth import Guard
from .metrics import registry_for, render
from .sampler import Sampler
from .views import MAX_PAGE, Views

STATIC = resources.files("cwredis.dashboard") / "static"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _redis_errors(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """503 with the cause when Redis cannot be reached; 400 for a user error (as cw-admin's exit 1)."""
    def guarded(request: Request) -> Response:
        try:
            return handler(request)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return JSONResponse({"error": f"cannot reach Redis: {describe(exc)}"}, status_code=503)
    guarded.__name__ = handler.__name__
    return guarded


def _paging(request: Request) -> tuple[int, int]:
    try:
        return int(request.query_params.get("offset", 0)), int(request.query_params.get("limit", 25))
    except ValueError:
        raise UserError("offset and limit are whole numbers") from None


def build_app(views: Views, guard: Guard, sampler: Sampler | None, *, metrics_only: bool = False) -> Starlette:
    """The ASGI app: every route behind ``guard``; with ``metrics_only``, /metrics alone."""
    registry = registry_for(views)

    @_redis_errors
    def metrics(request: Request) -> Response:
        return Response(render(registry), media_type=METRICS_TYPE)

    routes: list[Any] = [Route("/metrics", metrics)]
    if not metrics_only:
        assert sampler is not None
        routes += _page_routes(views, guard, sampler)
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)])


def _page_routes(views: Views, guard: Guard, sampler: Sampler) -> list[Any]:
    def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html; charset=utf-8")

    def session(request: Request) -> Response:
        return JSONResponse({"csrf": guard.csrf, "page_size": MAX_PAGE})

    def overview(request: Request) -> Response:
        return JSONResponse(sampler.snapshot())

    @_redis_errors
    def running(request: Request) -> Response:
        return JSONResponse(views.running_page(*_paging(request)))

    @_redis_errors
    def failed(request: Request) -> Response:
        return JSONResponse(views.failed_page(*_paging(request)))

    @_redis_errors
    def workers(request: Request) -> Response:
        return JSONResponse(views.counts().workers)

    @_redis_errors
    def one_job(request: Request) -> Response:
        return JSONResponse(views.job_detail(request.path_params["job_id"]))

    async def act(request: Request) -> Response:
        try:
            body = await request.json()
            ids = body.get("ids") if isinstance(body, dict) else None
        except ValueError:
            ids = None
        if not isinstance(ids, list):
            return JSONResponse({"error": 'send {"ids": [JOBID, ...]}'}, status_code=400)
        action = request.path_params["action"]
        return await run_in_threadpool(_redis_errors(lambda _: JSONResponse(views.act(action, ids))), request)

    return [
        Route("/", index),
        Route("/api/session", session),
        Route("/api/overview", overview),
        Route("/api/running", running),
        Route("/api/failed", failed),
        Route("/api/workers", workers),
        Route("/api/job/{job_id:path}", one_job),
        Route("/api/{action}", act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC))),
    ]
