"""The dashboard at /ui/: static ES modules and CSS that call the /v1 API from the browser.

- Its files hold no data, so fetching them needs no token (auth guards /v1/ only). The page
  asks for the API's bearer token when /v1 answers 401 and sends it with each of its calls.
- It is a plain Flask blueprint, not a flask-smorest one: its routes are no API operations and
  stay out of openapi.yaml.
- Every URL in it is relative (`../v1/jobs`, `app.js`), so a reverse proxy may serve the service
  under a path prefix (`/fitjobs/ui/` -> `/ui/`) without telling the service.
- Its Content-Security-Policy allows scripts, styles, images and connections from this origin
  only: no inline script or style, no other host.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

UI_FOLDER = Path(__file__).with_name("ui")
CONTENT_SECURITY_POLICY = ("default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'; "
                           "object-src 'none'")

blp = Blueprint("dashboard", __name__)


@blp.get("/ui")
def dashboard_root() -> BaseResponse:
    """Send the browser to /ui/, so that the page's relative URLs resolve inside it."""
    # A relative Location: behind a proxy that serves the service under /prefix, /prefix/ui/.
    return redirect("ui/", code=308)


@blp.get("/ui/")
def dashboard_page() -> Response:
    """The dashboard's single page."""
    return send_from_directory(UI_FOLDER, "index.html")


@blp.get("/ui/<path:name>")
def dashboard_file(name: str) -> Response:
    """One of the dashboard's scripts, style sheets or images."""
    return send_from_directory(UI_FOLDER, name)


@blp.after_request
def protect_dashboard(response: Response) -> Response:
    """Same-origin content only; revalidated on each load, so a new release shows at once."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response
