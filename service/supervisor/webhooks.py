"""The webhook sender: a thread beside the supervisor loop that sends due deliveries and records each attempt.

Deliveries live in the database (service.store.webhook_store), so any supervisor sends them, and
one that stops leaves the rest to the others, or to itself when it starts again. A slow receiver
holds up this thread only, never the loop that claims and watches jobs.
"""

from __future__ import annotations

import logging
import ssl
import time

from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.store.webhook_store import RetryPolicy, WebhookDelivery, WebhookStore
from service.supervisor.periodic import PeriodicTask
from service.webhooks.delivery import MAX_ADDRESSES, AttemptResult, post_signed
from service.webhooks.signing import parse_secret, signed_headers

log = logging.getLogger(__name__)


class WebhookSender(PeriodicTask):
    """Claims due deliveries one at a time and POSTs them, every ``interval`` seconds while any are due."""

    name = "webhook-sender"
    # Deliveries wait in the database meanwhile.
    outage = "webhooks wait for the next pass"

    def __init__(self, settings: Settings, store: WebhookStore, *, interval: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(interval)
        self.store = store
        self.policy = settings.webhook_policy
        self.timeout = settings.webhook_timeout_seconds
        self.retry = RetryPolicy(first_seconds=settings.webhook_retry_seconds,
                                 max_seconds=settings.webhook_max_retry_seconds,
                                 give_up_seconds=settings.webhook_give_up_seconds)
        self.key = parse_secret(settings.webhook_secret) if settings.webhook_secret else None
        self.ssl_context = ssl_context
        # A claim outlasts the longest attempt (a connect and an answer per address tried), so
        # no other sender takes a delivery over while it is still being tried.
        self.claim_seconds = self.timeout * 2 * MAX_ADDRESSES + 30

    def run_once(self) -> int:
        """Send what is due now (stop() ends it early; an attempt in flight is recorded)."""
        return self.send_due()

    def send_due(self, seconds: float | None = None) -> int:
        """Send every delivery due now, one attempt each, for at most ``seconds`` (None: until none is due,
        or stop()); returns how many attempts were made."""
        deadline = None if seconds is None else time.monotonic() + seconds
        sent = 0
        while deadline is not None or not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return sent
            # A failed attempt makes its delivery due later, so this ends once each was tried.
            claimed = self.store.claim_due(self.claim_seconds)
            if not claimed:
                return sent
            for delivery in claimed:
                # Within a deadline, an attempt gets no more than the time left (at least a second).
                left = self.timeout if deadline is None else max(1.0, deadline - time.monotonic())
                self._attempt(delivery, min(self.timeout, left))
                sent += 1
        return sent

    def send_remaining(self, seconds: float) -> int:
        """After stop(): one attempt of each delivery due now, within ``seconds``; what a stopping supervisor
        sends before it exits (the events of its jobs' last moves, above all)."""
        try:
            return self.send_due(seconds)
        except SQLAlchemyError as exc:
            log.warning("database unavailable, webhooks wait for another supervisor: %s", exc)
            return 0

    def _attempt(self, delivery: WebhookDelivery, timeout: float) -> None:
        if self.key is None:
            result = AttemptResult(False, error="not sent: FITJOBS_WEBHOOK_SECRET is not set where it is sent from")
        else:
            body = delivery.body.encode()
            headers = signed_headers(self.key, delivery.id, int(time.time()), body)
            result = post_signed(delivery.url, body, headers, self.policy, timeout=timeout,
                                 ssl_context=self.ssl_context)
        recorded = self.store.record_attempt(delivery, delivered=result.delivered, status_code=result.status_code,
                                             error=result.error, retry=self.retry)
        if result.delivered:
            log.info("webhook %s (%s of job %s) delivered on attempt %d", delivery.id, delivery.event_type,
                     delivery.job_id, delivery.attempts)
        else:
            state = recorded.state.value if recorded is not None else "taken over"
            log.warning("webhook %s (%s of job %s) attempt %d failed (%s): %s", delivery.id, delivery.event_type,
                        delivery.job_id, delivery.attempts, state, result.error)

