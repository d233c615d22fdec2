"""One delivery attempt: POST a signed body to a checked address, never following a redirect."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError

from service.webhooks.destinations import DestinationPolicy, DestinationRefused

# What is kept of an error or a receiver's answer: enough to tell what went wrong.
MAX_ERROR_CHARS = 500
# Of a receiver's answer only the status matters; a little of the body is read so the
# connection closes cleanly, and no more.
MAX_BODY_BYTES = 4096
# Addresses of a host tried in one attempt, so that one attempt takes a bounded time.
MAX_ADDRESSES = 3


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt went: delivered (a 2xx answer), or the status and error that failed it."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def post_signed(url: str, body: bytes, headers: dict[str, str], policy: DestinationPolicy, *,
                timeout: float, ssl_context: ssl.SSLContext | None = None) -> AttemptResult:
    """POST ``body`` to ``url``: resolve its host once, check every address, connect to a checked one.

    The request goes to the address itself, with the URL's host in the Host header and, for
    https, in SNI and the certificate check, so no second DNS lookup can redirect it. A 3xx
    answer is a failed attempt: a redirect is never followed. ``ssl_context`` replaces the
    system's trusted certificates (a test's own authority).
    """
    try:
        destination, addresses = policy.check(url)
    except DestinationRefused as exc:
        return AttemptResult(False, error=_short(f"refused: the URL {exc}"))
    last_error = "no address to connect to"
    for address in addresses[:MAX_ADDRESSES]:
        tls: dict[str, object] = {}
        pool_class: type[urllib3.HTTPConnectionPool] = urllib3.HTTPConnectionPool
        if destination.scheme == "https":
            pool_class = urllib3.HTTPSConnectionPool
            tls = {"server_hostname": destination.host, "assert_hostname": destination.host,
                   "cert_reqs": "CERT_REQUIRED"}
            if ssl_context is not None:
                tls["ssl_context"] = ssl_context
        pool = pool_class(str(address), destination.port, timeout=urllib3.Timeout(timeout), retries=False,
                          maxsize=1, **tls)  # type: ignore[arg-type]
        try:
            response = pool.urlopen("POST", destination.target, body=body,
                                    headers={**headers, "Host": destination.host_header},
                                    redirect=False, retries=False, preload_content=False,
                                    assert_same_host=False)
            try:
                response.read(MAX_BODY_BYTES)
            except HTTPError:
                pass  # the status line is what counts
            status = response.status
            response.release_conn()
        except NewConnectionError as exc:
            last_error = f"could not connect to {address}: {exc}"
            continue  # the host's next checked address
        except (HTTPError, OSError) as exc:
            return AttemptResult(False, error=_short(f"{type(exc).__name__} at {address}: {exc}"))
        finally:
            pool.close()
        if 200 <= status < 300:
            return AttemptResult(True, status_code=status)
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            return AttemptResult(False, status_code=status,
                                 error=_short(f"answered {status}, a redirect (to {location!r}), which is not "
                                              "followed"))
        return AttemptResult(False, status_code=status, error=f"answered {status}")
    return AttemptResult(False, error=_short(last_error))
