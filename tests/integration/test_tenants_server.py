"""Tenants through a real `fitjobs api` (gunicorn): where it listens without tokens, and the rate limit."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.service import REPO_ROOT, start_service


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_without_tokens_the_api_listens_on_loopback_only_and_says_so(tmp_path: Path) -> None:
    address = non_loopback_address()
    service = start_service(tmp_path / "home", role="api",
                            extra_env={"FITJOBS_HOST": "0.0.0.0", "FITJOBS_API_GRACEFUL_TIMEOUT": "1"})
    try:
        assert service.get("/v1/jobs").status_code == 200, "anonymous callers on loopback are served"
        port = service.url.rsplit(":", 1)[1]
        # Every machine these tests run on has one; without it only the notice is checked.
        if address is not None:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{address}:{port}/healthz", timeout=5)
    finally:
        service.stop()
    output = service.output()
    assert "listening on 127.0.0.1 only, not on FITJOBS_HOST=0.0.0.0" in output
    assert "FITJOBS_ALLOW_ANONYMOUS=1" in output


def test_a_tenant_over_its_request_rate_gets_429_from_the_server(tmp_path: Path) -> None:
    token = "alpha-token-0123456789abcdef"
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(f"alpha:\n  tokens: [{hashlib.sha256(token.encode()).hexdigest()}]\n"
                       "  quotas: {requests_per_minute: 3}\n")
    # One worker: the single-node counters live in each worker's memory.
    service = start_service(tmp_path / "home", role="api", extra_env={
        "FITJOBS_HOST": "0.0.0.0", "FITJOBS_TENANTS_FILE": str(tenants), "FITJOBS_API_WORKERS": "1",
        "FITJOBS_API_GRACEFUL_TIMEOUT": "1"})
    try:
        if (address := non_loopback_address()) is not None:
            port = service.url.rsplit(":", 1)[1]
            assert requests.get(f"http://{address}:{port}/healthz", timeout=5).status_code == 200, \
                "with tokens, FITJOBS_HOST is where it listens"
        headers = {"Authorization": f"Bearer {token}"}
        assert service.get("/v1/jobs").status_code == 401
        # The CLI's client commands send FITJOBS_TOKEN.
        cli = [sys.executable, "-m", "service.cli", "list", "--url", service.url]
        env = {**os.environ, "FITJOBS_HOME": str(tmp_path / "cli")}
        refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
        listed = subprocess.run(cli, env={**env, "FITJOBS_TOKEN": token}, capture_output=True, text=True,
                                timeout=60, cwd=REPO_ROOT)
        assert listed.returncode == 0, listed.stderr
        assert [service.get("/v1/tenant", headers=headers).status_code for _ in range(2)] == [200, 200]
        limited = service.get("/v1/jobs", headers=headers)
        assert limited.status_code == 429 and limited.headers["Content-Type"] == "application/problem+json"
        assert limited.json()["quota"] == "requests_per_minute" and 1 <= int(limited.headers["Retry-After"]) <= 60
        assert service.get("/readyz").status_code == 200
    finally:
        service.stop()
    assert "no API tokens" not in service.output()
