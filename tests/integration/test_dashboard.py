"""The dashboard at /ui/ in a real browser: Playwright drives Debian's Chromium against a real `fitjobs serve`.

Jobs are real tiny-BERT fits. Screenshots of a job page mid-training and after success, and of
the form's dry-run reports, are saved under $FITJOBS_TEST_ARTIFACTS/dashboard (default:
test-artifacts/dashboard in pytest's base temporary folder). Without Chromium or Playwright the
tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.support.prefix_proxy import PrefixProxy
from tests.support.sentiment_data import tiny_job_spec, write_sentiment_files
from tests.support.service import RunningService, start_service

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
TERMINAL = {"succeeded", "failed", "cancelled"}
STEP_CHART = "figure[data-chart='Training loss by step']"
TOKEN = "dashboard-token-0123456789"


def unavailable(reason: str) -> None:
    """Skip with ``reason``; under CI=true fail instead, since CI must run the browser tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run; `make setup` installs both)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (package `chromium`), headless, through Playwright; not Playwright's own browsers."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing: install Debian's chromium package (`make setup` does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (it is in the test extra: pip install -e '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: $FITJOBS_TEST_ARTIFACTS/dashboard, else under pytest's base temporary folder."""
    root = os.environ.get("FITJOBS_TEST_ARTIFACTS") or str(tmp_path_factory.getbasetemp() / "test-artifacts")
    folder = Path(root).resolve() / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def data_folder(service: RunningService) -> str:
    """Sentiment files under the service's data root; returns their folder, relative to it."""
    write_sentiment_files(service.data_root / "dashboard", 480, 60, "val.jsonl")
    return "dashboard"


@dataclass
class BrowserPage:
    """A page in a fresh browser context (its own sessionStorage), with what the page logged."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def blocked_by_policy(self) -> list[str]:
        """Console errors about the Content-Security-Policy: inline code, other origins."""
        return [error for error in self.errors if "Content Security Policy" in error]


OpenPage = Callable[[str], BrowserPage]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Open a URL in a fresh context; every page is checked for script errors and policy violations."""
    contexts = []
    pages: list[BrowserPage] = []

    def open_url(url: str) -> BrowserPage:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        opened = BrowserPage(page)

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                opened.errors.append(message.text)

        page.on("console", console)
        page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: opened.requests.append(request.url))
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(url)
        pages.append(opened)
        return opened

    yield open_url
    for opened in pages:
        assert opened.blocked_by_policy() == [], opened.errors
        assert [error for error in opened.errors if error.startswith("uncaught")] == [], opened.errors
    for context in contexts:
        context.close()


def badge_state(page: Page) -> str | None:
    """The state the job page shows."""
    return page.get_attribute(".job-header .badge", "data-state")


def plotted_steps(page: Page) -> int:
    """Points in the page's per-step loss chart."""
    return int(page.get_attribute(STEP_CHART, "data-points") or 0)


def wait_for_page_state(page: Page, states: set[str], timeout: float) -> str:
    """Wait until the job page shows one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = badge_state(page)
        if state in states:
            return state
        time.sleep(0.2)
    raise AssertionError(f"the job page shows {badge_state(page)!r} after {timeout} s, not one of {states}")


def submit(service: RunningService, spec: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    response = service.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def succeeded_job(service: RunningService, tiny_model_dir: Path, data_folder: str) -> str:
    """A small job submitted through the API that succeeded."""
    job_id = submit(service, tiny_job_spec(tiny_model_dir, data_folder, "val.jsonl", epochs=1, batch_size=32))
    assert service.wait_for_state(job_id, TERMINAL, timeout=300)["state"] == "succeeded"
    return job_id


def test_form_dry_runs_then_submits_and_the_job_page_follows_the_fit_live(
        service: RunningService, tiny_model_dir: Path, data_folder: str, open_page: OpenPage,
        artifacts_dir: Path) -> None:
    # 240 steps an epoch for 3 epochs: seconds of fitting, long enough to watch the step curve grow.
    spec = tiny_job_spec(tiny_model_dir, data_folder, "val.jsonl", epochs=3, batch_size=2)
    steps = 480 // 2 * 3
    opened = open_page(service.url + "/ui/#/new")
    page = opened.page
    page.wait_for_selector("#spec")
    assert page.is_disabled("#submit-job"), "submitting needs a dry run first"
    page.fill("#spec", json.dumps(spec, indent=2))
    page.click("#dry-run")
    page.wait_for_selector(".report[data-valid='true']", timeout=60_000)
    assert page.inner_text(".report tr[data-split='train'] td.num >> nth=0") == "480"
    assert page.inner_text(".report tr[data-split='validation'] td.num >> nth=0") == "60"
    assert "negative, positive" in page.inner_text(".report .facts")
    assert page.is_enabled("#submit-job")
    page.screenshot(path=artifacts_dir / "dry-run-report.png", full_page=True)

    page.click("#submit-job")
    page.wait_for_url("**/ui/#/jobs/*")
    job_id = page.inner_text(".job-id")
    job = service.get(f"/v1/jobs/{job_id}").json()
    assert job["spec"]["hyperparameters"]["batch_size"] == 2 and job["spec"]["model"] == str(tiny_model_dir)

    # The step curve, sampled while the page says the job runs.
    counts_while_running: list[int] = []
    # Shot at the first plotted point, and again, where the samples allow, with a quarter or more of them.
    shots: set[str] = set()
    deadline = time.monotonic() + 300
    while (state := badge_state(page)) not in TERMINAL and time.monotonic() < deadline:
        if state == "running":
            count = plotted_steps(page)
            counts_while_running.append(count)
            moment = "first" if 0 < count < steps // 4 else "quarter" if steps // 4 <= count < steps else None
            if moment and moment not in shots and "quarter" not in shots:
                page.screenshot(path=artifacts_dir / "job-mid-training.png", full_page=True)
                shots.add(moment)
        time.sleep(0.1)
    assert badge_state(page) == "succeeded", service.get(f"/v1/jobs/{job_id}/logs").text[-3000:]
    grew = sorted(set(count for count in counts_while_running if count > 0))
    assert counts_while_running == sorted(counts_while_running), "the curve only grows"
    assert len(grew) >= 2, f"the curve should grow live; it showed {grew} points while running"
    assert grew[0] < steps, "points were plotted before the fit ended"

    # Once it succeeded the page shows everything the API has: all steps, the evaluation.
    page.wait_for_selector(".confusion-matrix", timeout=30_000)
    metrics = service.get(f"/v1/jobs/{job_id}/metrics").json()
    page.wait_for_function("n => document.querySelector(\"" + STEP_CHART + "\").dataset.points == n",
                           arg=str(len(metrics["steps"])))
    assert len(metrics["steps"]) == steps
    evaluation = service.get(f"/v1/jobs/{job_id}/evaluation").json()
    assert shown_matrix(page) == evaluation["confusion_matrix"]["matrix"]
    page.screenshot(path=artifacts_dir / "job-succeeded.png", full_page=True)
    page.wait_for_function("() => document.querySelector('.logs').textContent.includes('Epoch 3/3')")
    kinds = page.eval_on_selector_all(".timeline li.state-event .badge", "nodes => nodes.map(n => n.dataset.state)")
    assert kinds == ["queued", "running", "succeeded"]
    assert (artifacts_dir / "job-mid-training.png").stat().st_size > 0
    print(f"\nscreenshots of job {job_id}: {artifacts_dir}; step points seen while running: {grew}")


def shown_matrix(page: Page) -> list[list[int]]:
    """The confusion matrix as the page's table shows it."""
    rows: list[list[str]] = page.eval_on_selector_all(
        ".confusion-matrix tbody tr", "rows => rows.map(r => [...r.querySelectorAll('td')].map(c => c.textContent))")
    return [[int(cell) for cell in row] for row in rows]


def test_a_dry_run_problem_is_shown_and_nothing_is_submitted(
        service: RunningService, tiny_model_dir: Path, data_folder: str, open_page: OpenPage,
        artifacts_dir: Path) -> None:
    jobs_before = service.get("/v1/jobs?limit=200").json()["jobs"]
    spec = tiny_job_spec(tiny_model_dir, data_folder, "val.jsonl")
    spec["data"]["label_column"] = "sentiment"  # the files have no such column
    page = open_page(service.url + "/ui/#/new").page
    page.wait_for_selector("#spec")
    page.fill("#spec", json.dumps(spec))
    page.click("#dry-run")
    problems = page.locator(".report.has-problems li[data-check='missing_column']")
    problems.first.wait_for(timeout=60_000)
    assert "sentiment" in problems.first.inner_text()
    assert "no column 'sentiment'" in page.inner_text(".problem p")
    assert page.is_disabled("#submit-job")
    page.screenshot(path=artifacts_dir / "dry-run-problems.png", full_page=True)

    # A field the schema refuses is named, with its message.
    spec["hyperparameters"]["epochs"] = 0
    page.fill("#spec", json.dumps(spec))
    page.click("#dry-run")
    assert "hyperparameters.epochs" in page.locator(".field-errors li").inner_text()
    page.fill("#spec", "{not json")
    page.click("#dry-run")
    assert "Not valid JSON" in page.locator(".problem").inner_text()
    assert page.is_disabled("#submit-job")
    assert service.get("/v1/jobs?limit=200").json()["jobs"] == jobs_before


def test_the_job_list_filters_by_state_and_needs_no_token_without_auth(
        service: RunningService, succeeded_job: str, tiny_model_dir: Path, open_page: OpenPage) -> None:
    opened = open_page(service.url + "/ui/")
    page = opened.page
    row = page.locator(f"tr[data-job='{succeeded_job}']")
    assert row.locator(".badge").get_attribute("data-state") == "succeeded"
    assert row.locator("td.model").inner_text() == str(tiny_model_dir)
    assert row.locator("progress").get_attribute("value") == "1000"
    assert "ago" in row.locator("td").last.inner_text()
    assert page.query_selector("#token-form") is None, "no token prompt when the service runs without auth"
    assert page.inner_text("#who") == "tenant default"

    with page.expect_request(lambda request: "/v1/jobs?" in request.url and "state=failed" in request.url):
        page.select_option("#state-filter", "failed")
    page.wait_for_selector(".list-status:text('No failed jobs.')")
    assert page.query_selector(f"tr[data-job='{succeeded_job}']") is None
    page.select_option("#state-filter", "succeeded")
    page.wait_for_selector(f"tr[data-job='{succeeded_job}']")
    states = page.eval_on_selector_all("table.jobs tbody .badge", "nodes => nodes.map(n => n.dataset.state)")
    assert states and set(states) == {"succeeded"}

    page.click(f"tr[data-job='{succeeded_job}'] a.job-link")
    page.wait_for_url(f"**/ui/#/jobs/{succeeded_job}")
    assert wait_for_page_state(page, TERMINAL, 30) == "succeeded"


def test_a_succeeded_job_shows_its_evaluation_and_downloads_its_artifacts(
        service: RunningService, succeeded_job: str, open_page: OpenPage, tmp_path: Path) -> None:
    page = open_page(service.url + f"/ui/#/jobs/{succeeded_job}").page
    page.wait_for_selector(".confusion-matrix")
    evaluation = service.get(f"/v1/jobs/{succeeded_job}/evaluation").json()
    matrix = shown_matrix(page)
    assert matrix == evaluation["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == evaluation["rows"] == 60
    headers = page.eval_on_selector_all(".confusion-matrix thead th", "nodes => nodes.map(n => n.textContent)")
    assert headers[1:] == evaluation["labels"]
    for label, scores in evaluation["per_class"].items():
        cells = page.eval_on_selector_all(f".per-class tr[data-label='{label}'] td",
                                          "cells => cells.map(c => c.textContent)")
        assert cells == [f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", f"{scores['f1']:.3f}",
                         str(scores["support"])]

    page.wait_for_selector("a[data-artifact='metrics.json']")
    with page.expect_download() as download:
        page.click("a[data-artifact='metrics.json']")
    saved = tmp_path / "metrics.json"
    download.value.save_as(saved)
    assert saved.read_bytes() == service.get(f"/v1/jobs/{succeeded_job}/artifacts/metrics.json").content
    listed = {a["name"] for a in service.get(f"/v1/jobs/{succeeded_job}/artifacts").json()["artifacts"]}
    shown = set(page.eval_on_selector_all(".artifact-list a", "links => links.map(a => a.dataset.artifact)"))
    assert shown == listed


def test_the_cancel_button_stops_a_running_job(
        service: RunningService, tiny_model_dir: Path, data_folder: str, open_page: OpenPage) -> None:
    # Far more epochs than the test waits for: only the cancel ends it.
    job_id = submit(service, tiny_job_spec(tiny_model_dir, data_folder, "val.jsonl", epochs=100, batch_size=4))
    page = open_page(service.url + f"/ui/#/jobs/{job_id}").page
    assert wait_for_page_state(page, {"running"}, 120) == "running"
    page.wait_for_function("() => Number(document.querySelector(\"" + STEP_CHART + "\").dataset.points) > 0",
                           timeout=120_000)
    page.click("#cancel-job")
    assert wait_for_page_state(page, TERMINAL, 120) == "cancelled"
    assert service.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert page.query_selector("#cancel-job") is None, "a finished job has nothing to cancel"
    assert page.wait_for_selector(".timeline li[data-kind='cancel_requested']")


@pytest.fixture(scope="module")
def guarded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`fitjobs api` (no supervisor: jobs stay queued) that needs a bearer token.

    One API process that follows at most one event stream, and notices within a second that a
    client left one.
    """
    api = start_service(tmp_path_factory.mktemp("dashboard-auth"), role="api",
                        extra_env={"FITJOBS_API_TOKENS": TOKEN, "FITJOBS_API_WORKERS": "1",
                                   "FITJOBS_API_MAX_STREAMS": "1", "FITJOBS_API_STREAM_HEARTBEAT_SECONDS": "0.5"})
    yield api
    assert api.stop() == 0, api.output()[-3000:]


def test_the_token_prompt_and_a_path_prefix(guarded_api: RunningService, tiny_model_dir: Path,
                                            open_page: OpenPage) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    write_sentiment_files(guarded_api.data_root / "small", 20, 10)
    job_id = submit(guarded_api, tiny_job_spec(tiny_model_dir, "small"), headers=auth)
    with PrefixProxy(guarded_api.url, "/tools/fitjobs") as proxy:
        # The page's own files need no token; without a slash, /ui redirects into the prefix.
        assert requests.get(proxy.url + "/ui/app.js", timeout=10).status_code == 200
        opened = open_page(proxy.url + "/ui")
        page = opened.page
        assert page.url == proxy.url + "/ui/"
        page.wait_for_selector("#token-form")
        page.fill("#token", "not-the-token-0123456789")
        page.click("#token-form button[type='submit']")
        assert "not valid" in page.locator("#token-form .problem").inner_text()
        page.fill("#token", TOKEN)
        page.click("#token-form button[type='submit']")
        page.wait_for_selector(f"tr[data-job='{job_id}']")
        assert page.evaluate("sessionStorage.getItem('fitjobs.token')") == TOKEN

        # A reload keeps the token for this tab: no second prompt.
        page.reload()
        page.wait_for_selector(f"tr[data-job='{job_id}']")
        assert page.query_selector("#token-form") is None

        # The job page: its event stream, sent the token, follows it through the proxy.
        page.click(f"tr[data-job='{job_id}'] a.job-link")
        page.wait_for_selector(".timeline li[data-kind='state']")
        assert badge_state(page) == "queued"
        page.click("#cancel-job")
        assert wait_for_page_state(page, TERMINAL, 30) == "cancelled"
        page.wait_for_selector(".timeline li[data-kind='state'] .badge[data-state='cancelled']")

        assert proxy.outside == [], "every URL of the page stays under the prefix"
        assert all(url.startswith(proxy.url + "/") for url in opened.requests), opened.requests
    assert guarded_api.get(f"/v1/jobs/{job_id}", headers=auth).json()["state"] == "cancelled"


def test_without_a_free_event_stream_the_job_page_reads_the_event_list(guarded_api: RunningService,
                                                                       tiny_model_dir: Path,
                                                                       open_page: OpenPage) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    write_sentiment_files(guarded_api.data_root / "small", 20, 10)
    job_id = submit(guarded_api, tiny_job_spec(tiny_model_dir, "small"), headers=auth)
    # The API process's only stream (FITJOBS_API_MAX_STREAMS=1) is taken.
    held = requests.get(f"{guarded_api.url}/v1/jobs/{job_id}/events", stream=True, timeout=30,
                        headers={**auth, "Accept": "text/event-stream"})
    assert held.status_code == 200
    page = open_page(f"{guarded_api.url}/ui/#/jobs/{job_id}").page
    try:
        page.fill("#token", TOKEN)
        page.click("#token-form button[type='submit']")
        page.wait_for_selector(".stream-status:text('reconnecting')")
        page.wait_for_selector(".timeline li[data-kind='state'] .badge[data-state='queued']")
        assert page.locator(".timeline li").count() == 1
    finally:
        held.close()
    # Once the stream is free the page follows it again, and a cancel made elsewhere shows.
    page.wait_for_selector(".stream-status:text('(live)')", timeout=30_000)
    assert guarded_api.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    page.wait_for_selector(".timeline li[data-kind='state'] .badge[data-state='cancelled']")
    assert badge_state(page) == "cancelled"
    events = guarded_api.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["events"]
    shown = page.eval_on_selector_all(".timeline li .message", "nodes => nodes.map(n => n.textContent)")
    assert shown == [event["message"] for event in events], "each event once, in order"


def test_the_job_list_shows_a_page_at_a_time(guarded_api: RunningService, tiny_model_dir: Path,
                                            open_page: OpenPage) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    write_sentiment_files(guarded_api.data_root / "small", 20, 10)
    for _ in range(21):
        submit(guarded_api, tiny_job_spec(tiny_model_dir, "small"), headers=auth)
    total = len(guarded_api.get("/v1/jobs?limit=200", headers=auth).json()["jobs"])
    page = open_page(f"{guarded_api.url}/ui/#/jobs?state=queued").page
    page.fill("#token", TOKEN)
    page.click("#token-form button[type='submit']")
    page.wait_for_selector("table.jobs tbody tr")
    assert page.locator("table.jobs tbody tr").count() == 20
    assert page.input_value("#state-filter") == "queued"
    queued = len(guarded_api.get("/v1/jobs?limit=200&state=queued", headers=auth).json()["jobs"])
    assert queued >= 21 and total >= queued
    page.click("text=More")
    page.wait_for_function(f"() => document.querySelectorAll('table.jobs tbody tr').length === {queued}")
    shown = page.eval_on_selector_all("table.jobs tbody tr", "rows => rows.map(r => r.dataset.job)")
    listed = [job["id"] for job in guarded_api.get("/v1/jobs?limit=200&state=queued", headers=auth).json()["jobs"]]
    assert shown == listed, "newest first, each job once"
