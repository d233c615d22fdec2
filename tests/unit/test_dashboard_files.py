"""The /ui/ routes: open without a token, same-origin only, not API operations; the files hang together."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient

from service.api import create_app
from service.api.dashboard import CONTENT_SECURITY_POLICY, UI_FOLDER
from service.config import Settings

TOKEN = "unit-dashboard-token-0123456789"
SCRIPTS = sorted(UI_FOLDER.glob("*.js"))


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[FlaskClient]:
    """A client of the app with a bearer token configured, so that /v1 needs one."""
    app = create_app(Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none",
                                        "FITJOBS_API_TOKENS": TOKEN}), test_config={"TESTING": True})
    yield app.test_client()
    app.extensions["fitjobs.store"].engine.dispose()


@pytest.mark.parametrize(("name", "mimetype"), [
    ("", "text/html"), ("app.js", "javascript"), ("style.css", "text/css"), ("example-spec.json", "application/json"),
    ("favicon.svg", "image/svg+xml")])
def test_the_dashboards_files_need_no_token_and_allow_only_this_origin(guarded: FlaskClient, name: str,
                                                                        mimetype: str) -> None:
    response = guarded.get(f"/ui/{name}")
    assert response.status_code == 200
    assert mimetype in (response.mimetype or "")
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'" and "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert guarded.get("/v1/jobs").status_code == 401, "the API itself still needs the token"


def test_ui_without_a_slash_redirects_relatively(guarded: FlaskClient) -> None:
    response = guarded.get("/ui")
    assert response.status_code == 308
    # Relative, so that behind a proxy serving /prefix/ui the browser lands on /prefix/ui/.
    assert response.headers["Location"] == "ui/"


@pytest.mark.parametrize("path", ["/ui/missing.js", "/ui/../app.py", "/ui/%2e%2e/dashboard.py", "/ui/..%2fapp.py"])
def test_only_the_dashboards_own_files_are_served(guarded: FlaskClient, path: str) -> None:
    response = guarded.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_the_dashboard_is_no_api_operation(client: FlaskClient) -> None:
    document = yaml.safe_load(client.get("/openapi.yaml").get_data(as_text=True))
    assert document["paths"] and not [path for path in document["paths"] if path.startswith("/ui")]


def test_every_module_and_file_the_page_loads_exists() -> None:
    page = (UI_FOLDER / "index.html").read_text()
    linked = re.findall(r'(?:src|href)="([^"#]+)"', page)
    imported = [name for script in SCRIPTS for name in re.findall(r'from "\./([^"]+)"', script.read_text())]
    fetched = [name for script in SCRIPTS for name in re.findall(r'fetch\("([^"./][^"]*)"', script.read_text())]
    assert "app.js" in linked and "dom.js" in imported and "example-spec.json" in fetched
    for name in linked + imported + fetched:
        assert (UI_FOLDER / name).is_file(), name


def test_the_page_has_no_inline_code_and_no_absolute_urls() -> None:
    """The policy blocks inline scripts and style attributes; absolute paths would break under a prefix."""
    page = (UI_FOLDER / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    for path in [UI_FOLDER / "index.html", *SCRIPTS]:
        text = path.read_text()
        assert not re.search(r"\bstyle=|\.style\.|setAttribute\(\s*['\"]style", text), path.name
        assert not re.search(r"""["'`]/(?:v1|ui)\b""", text), f"{path.name} uses an absolute path"
        # No other origin (an XML namespace is a name, not a URL that is fetched).
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), path.name
