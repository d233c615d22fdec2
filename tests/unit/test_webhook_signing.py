"""Standard Webhooks signatures, checked by the `standardwebhooks` package (an independent implementation)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.config import ConfigError, Settings
from service.webhooks.signing import parse_secret, signature, signed_headers

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def test_a_signed_delivery_verifies_with_the_secret_and_its_body_comes_back() -> None:
    body = json.dumps({"type": "job.succeeded", "data": {"job_id": "job_1"}}).encode()
    headers = signed_headers(parse_secret(SECRET), "msg_1", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.succeeded", "data": {"job_id": "job_1"}}


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "secret"])
def test_a_changed_body_id_timestamp_or_secret_fails_verification(change: str) -> None:
    body = b'{"type":"job.failed"}'
    now = int(time.time())
    headers = signed_headers(parse_secret(SECRET), "msg_1", now, body)
    secret = SECRET
    if change == "body":
        body = b'{"type":"job.succeeded"}'
    elif change == "id":
        headers["webhook-id"] = "msg_2"
    elif change == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_the_signature_is_the_hmac_of_id_timestamp_and_body() -> None:
    # The example of the Standard Webhooks specification.
    key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("value", ["secret", "whsec_", "whsec_not base64!",
                                   "whsec_" + base64.b64encode(b"short").decode(),
                                   "whsec_" + base64.b64encode(bytes(65)).decode()])
def test_a_secret_that_is_not_whsec_base64_of_24_to_64_bytes_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_secret(value)
    with pytest.raises(ConfigError, match="FITJOBS_WEBHOOK_SECRET"):
        Settings.from_env({"FITJOBS_WEBHOOK_SECRET": value})


def test_the_secret_stays_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({"FITJOBS_WEBHOOK_SECRET": SECRET})
    assert settings.webhook_secret == SECRET and SECRET not in repr(settings)
