"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 of "{id}.{timestamp}.{body}".

A receiver verifies them with the deployment's secret (FITJOBS_WEBHOOK_SECRET, `whsec_<base64>`),
for example with the `standardwebhooks` package; the README shows how.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
# Standard Webhooks asks for secrets of 24 to 64 bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def parse_secret(text: str) -> bytes:
    """The key of a `whsec_<base64>` secret; ValueError when it is not one of 24 to 64 bytes."""
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"must be `{SECRET_PREFIX}` followed by the base64 of 24 to 64 random bytes "
                         "(`echo whsec_$(openssl rand -base64 32)`)")
    try:
        key = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the part after `{SECRET_PREFIX}` is not base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt: id, Unix timestamp of the attempt, signature, content type."""
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(key, message_id, timestamp, body),
            "Content-Type": "application/json"}
