"""A small Python client for the fitjobs HTTP API, used by the CLI and by other services."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiError(RuntimeError):
    """The API answered with a problem+json error."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "request failed"
        super().__init__(f"HTTP {status}: {detail}")


class FitjobsClient:
    """Submit jobs, follow them and fetch their models."""

    def __init__(self, base_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, self.base_url + path, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:500]}
            raise ApiError(response.status_code, problem)
        return response

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a job; returns the job document."""
        return self._request("POST", "/v1/jobs", json=spec).json()

    def get(self, job_id: str) -> dict[str, Any]:
        """The job document."""
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def list(self, state: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest jobs, optionally of one state."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._request("GET", "/v1/jobs", params=params).json()["jobs"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job (idempotent)."""
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def metrics(self, job_id: str) -> dict[str, Any]:
        """Per-epoch and per-step metrics."""
        return self._request("GET", f"/v1/jobs/{job_id}/metrics").json()

    def logs(self, job_id: str) -> str:
        """The trainer log of the latest attempt."""
        return self._request("GET", f"/v1/jobs/{job_id}/logs").text

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 1.0,
             on_update: Any = None) -> dict[str, Any]:
        """Poll until the job is terminal (or ``timeout`` seconds pass); returns the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job["state"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(interval)

    def download_model(self, job_id: str, destination: Path) -> Path:
        """Save the job's model.tar.gz to ``destination`` (a file path)."""
        with self._request("GET", f"/v1/jobs/{job_id}/model.tar.gz", stream=True) as response:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(destination, "wb") as out:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
        return destination
