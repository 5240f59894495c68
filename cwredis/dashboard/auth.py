"""Who may use the dashboard: the access token, its cookie, the CSRF token, and the headers on every reply.

The pages show text anyone who can submit a job wrote, and their buttons
change the queue, so:

- every request carries the token, as ``?token=`` (the URL ``cw-admin
  dashboard`` prints), as ``Authorization: Bearer`` (a Prometheus scraper),
  or as the cookie the first kind is exchanged for (HttpOnly, SameSite=Strict,
  so no other site's page can send it); anything else gets 403;
- the token lives in ``$CWREDIS_HOME/dashboard-token`` (0600, created
  through :mod:`cwredis.safefiles`), so a bookmark survives a restart; delete
  the file to change it;
- a POST also needs ``X-CSRF-Token``, derived from the token and handed to
  the page by ``/api/session`` (same origin only: no CORS);
- every reply forbids inline script, framing, sniffing, caching and referrers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ..errors import ConfigError
from ..safefiles import create_private, read_private

#: The token's file in $CWREDIS_HOME.
TOKEN_FILE = "dashboard-token"

#: Sent with every reply: scripts and styles only from our own files, nothing inline, no frames.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

FORBIDDEN = ("403 forbidden: open the address `cw-admin dashboard` printed (it carries the access token), "
             "or send it as `Authorization: Bearer TOKEN`\n")


def load_token(home: Path) -> str:
    """The dashboard's access token, created (random, 256 bits) on first use; ConfigError if untrustworthy."""
    path = Path(home) / TOKEN_FILE
    create_private(path, secrets.token_urlsafe(32))  # a no-op when it exists: the old token stays valid
    raw = read_private(path, "the dashboard token file", private=True)
    token = (raw or b"").decode("ascii", "replace").strip()
    if len(token) < 32:
        raise ConfigError(f"refusing the dashboard token file {path}: it holds no usable token; delete it "
                          "and a new one is made")
    return token


class Guard:
    """Checks the token on every request and the CSRF token on every POST; adds the security headers."""

    def __init__(self, token: str, port: int) -> None:
        self._token = token.encode()
        self.csrf = hmac.new(self._token, b"cwredis dashboard csrf", hashlib.sha256).hexdigest()
        # Cookies ignore ports: name ours by port, so two dashboards on one host keep their own.
        self.cookie = f"cwredis_dashboard_{port}"

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self._token)

    def _presented(self, request: Request) -> tuple[str | None, bool]:
        """The token this request carries, and whether it came in the query string."""
        if "token" in request.query_params:
            return request.query_params["token"], True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip(), False
        return request.cookies.get(self.cookie), False

    async def __call__(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        token, in_query = self._presented(request)
        if not self._valid(token):
            response: Response = PlainTextResponse(FORBIDDEN, status_code=403)
        elif request.method not in ("GET", "HEAD") and not hmac.compare_digest(
                request.headers.get("x-csrf-token", "").encode(), self.csrf.encode()):
            response = PlainTextResponse("403 forbidden: missing or wrong CSRF token\n", status_code=403)
        elif in_query and request.method == "GET" and request.url.path != "/metrics":
            # Swap the token in the address for the cookie, and take it out of the address bar and history.
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(self.cookie, token or "", httponly=True, samesite="strict", path="/")
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response
