"""Delivery of outbound webhooks: claiming due deliveries, signing, sending, retrying, disabling.

**Claims.** A worker claims due deliveries in one short transaction: ``SELECT … FOR UPDATE SKIP
LOCKED`` on PostgreSQL (SQLite has a single writer), then moves each claimed row's
``next_attempt_at`` a lease ahead and counts the attempt. So any number of workers, in any number of
processes, never send the same delivery at the same time; a worker that dies mid-send leaves a
lease that expires, and the delivery is sent again — with the same ``webhook-id``, which receivers
deduplicate on. Delivery is therefore at least once, and exactly once per id at the receiver.

**Order.** A delivery is not claimed while an earlier event (lower ``seq``) with the same ordering
key (an invoice id) to the same endpoint is still pending, so a receiver sees each invoice's events
in order even across retries.

**Retries.** Exponential backoff with jitter (:class:`RetryPolicy`: 5 s, times 3 per attempt,
capped at 12 h, plus 0 to 20 % jitter) for at least three days from the first attempt; then the
delivery is ``failed`` (an admin can redeliver it). An endpoint failing for three days and at
least ten attempts in a row is ``disabled`` until an admin enables it; its pending deliveries wait.

**Receivers are untrusted.** URLs are checked again before every attempt
(:class:`~billing._webhook_urls.DestinationPolicy`) and the connection goes to the checked address;
redirects are not followed; connect and read timeouts are short; at most :data:`MAX_RESPONSE_BYTES`
of the response are read and discarded. Only the status code and an error class are stored.
"""

from __future__ import annotations

import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import httpx
from sqlalchemy import and_, exists
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from billing._db import Database
from billing._event_models import EventDelivery, EventRecord, WebhookEndpoint
from billing._events import endpoint_secrets
from billing._keyring import Keyring
from billing._keys import SubjectKeys
from billing._models import utcnow
from billing._webhook_signing import signature_header
from billing._webhook_urls import DestinationPolicy
from billing.errors import BillingError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AttemptOutcome",
    "DeliveryWorker",
    "RetryPolicy",
    "WebhookDelivery",
    "WebhookSender",
]

MAX_RESPONSE_BYTES: Final = 64 * 1024
USER_AGENT: Final = "Veilbill-Webhooks/1"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again, when to give up on a delivery and when to disable an endpoint."""

    first_delay: timedelta = timedelta(seconds=5)
    factor: float = 3.0
    max_delay: timedelta = timedelta(hours=12)
    jitter: float = 0.2
    give_up_after: timedelta = timedelta(days=3)
    disable_after: timedelta = timedelta(days=3)
    disable_after_failures: int = 10
    lease: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.first_delay <= timedelta(0) or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("the retry delays must grow from a positive first delay")
        if self.lease <= timedelta(0):
            raise ValueError("the lease must be positive")

    def delay(self, attempts: int, rng: Callable[[], float]) -> timedelta:
        """The wait after the ``attempts``-th failed attempt: exponential, capped, plus up to ``jitter``."""
        base = min(
            self.first_delay.total_seconds() * self.factor ** max(attempts - 1, 0),
            self.max_delay.total_seconds(),
        )
        return timedelta(seconds=base * (1 + self.jitter * rng()))


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """How one attempt ended: a 2xx, or an HTTP status, or an error class (never a body)."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None


class WebhookSender:
    """Posts one signed body to a checked address with httpx; reads at most a few KiB back."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        connect_timeout: float = 3.0,
        timeout: float = 5.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``verify`` is the TLS trust (the system's CA bundle by default; tests pass their own CA)."""
        self._policy = policy
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,
            verify=verify,
        )

    def close(self) -> None:
        self._client.close()

    def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptOutcome:
        try:
            destination = self._policy.check(url)
        except BillingError:
            return AttemptOutcome(delivered=False, error="address_refused")
        request_headers = {
            **headers,
            "host": destination.host_header,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
        try:
            request = self._client.build_request(
                "POST", destination.connect_url, content=body, headers=request_headers, extensions=extensions
            )
            response = self._client.send(request, stream=True)
            try:
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
            finally:
                response.close()
        except httpx.TimeoutException:
            return AttemptOutcome(delivered=False, error="timeout")
        except httpx.ConnectError:
            return AttemptOutcome(delivered=False, error="connection")
        except httpx.HTTPError:
            return AttemptOutcome(delivered=False, error="protocol")
        if 200 <= response.status_code < 300:
            return AttemptOutcome(delivered=True, status_code=response.status_code)
        return AttemptOutcome(delivered=False, status_code=response.status_code, error="http_status")


@dataclass(frozen=True, slots=True)
class _Claim:
    delivery_id: str
    attempt: int
    url: str
    headers: dict[str, str]
    body: bytes


class WebhookDelivery:
    """Claims due deliveries, sends them and records the outcome (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        sender: WebhookSender,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        jitter_rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._sender = sender
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._jitter_rng = jitter_rng

    def close(self) -> None:
        self._sender.close()

    def deliver_due(self, limit: int = 20) -> int:
        """Send every claimable delivery (up to ``limit``); returns how many attempts were made."""
        claims = self._claim(limit)
        for claim in claims:
            outcome = self._sender.send(claim.url, claim.headers, claim.body)
            self._record(claim, outcome)
        return len(claims)

    def _claim(self, limit: int) -> list[_Claim]:
        now = self._clock()
        # A read first: an idle worker never opens a write transaction (SQLite's single writer).
        with self._db.read() as session:
            due = session.exec(
                select(EventDelivery.id)
                .where(EventDelivery.status == "pending", col(EventDelivery.next_attempt_at) <= now)
                .limit(1)
            ).first()
        if due is None:
            return []
        earlier = aliased(EventDelivery)
        blocked = exists().where(
            and_(
                col(earlier.endpoint_id) == col(EventDelivery.endpoint_id),
                col(earlier.ordering_key) == col(EventDelivery.ordering_key),
                col(earlier.event_seq) < col(EventDelivery.event_seq),
                col(earlier.status) == "pending",
            )
        )
        query = (
            select(EventDelivery)
            .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(EventDelivery.endpoint_id))
            .where(
                EventDelivery.status == "pending",
                col(EventDelivery.next_attempt_at) <= now,
                WebhookEndpoint.status == "enabled",
                ~blocked,
            )
            .order_by(col(EventDelivery.event_seq))
            .limit(limit)
            .with_for_update(skip_locked=True, of=EventDelivery)
        )
        claims = []
        with self._db.transaction() as session:
            keys = SubjectKeys(session, self._keyring, clock=self._clock)
            for delivery in session.exec(query).all():
                endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
                event = session.exec(select(EventRecord).where(EventRecord.id == delivery.event_id)).one()
                assert endpoint is not None
                delivery.attempts += 1
                delivery.first_attempt_at = delivery.first_attempt_at or now
                delivery.last_attempt_at = now
                delivery.next_attempt_at = now + self._policy.lease
                session.add(delivery)
                body = event.payload.encode()
                timestamp = int(now.timestamp())
                headers = {
                    "webhook-id": event.id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": signature_header(
                        endpoint_secrets(keys, endpoint, now), event.id, timestamp, body
                    ),
                }
                claims.append(_Claim(delivery.id, delivery.attempts, endpoint.url, headers, body))
        return claims

    def _record(self, claim: _Claim, outcome: AttemptOutcome) -> None:
        now = self._clock()
        with self._db.transaction() as session:
            delivery = session.get(EventDelivery, claim.delivery_id, with_for_update=True)
            if delivery is None or delivery.status != "pending" or delivery.attempts != claim.attempt:
                return  # redelivered or canceled meanwhile: the newer state wins
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id, with_for_update=True)
            assert endpoint is not None
            delivery.last_status_code = outcome.status_code
            delivery.last_error = outcome.error
            if outcome.delivered:
                delivery.status = "delivered"
                delivery.delivered_at = now
                endpoint.consecutive_failures = 0
                endpoint.failing_since = None
            else:
                first = delivery.first_attempt_at or now
                if now - first >= self._policy.give_up_after:
                    delivery.status = "failed"
                else:
                    delivery.next_attempt_at = now + self._policy.delay(delivery.attempts, self._jitter_rng)
                endpoint.consecutive_failures += 1
                endpoint.failing_since = endpoint.failing_since or now
                if (
                    endpoint.status == "enabled"
                    and endpoint.consecutive_failures >= self._policy.disable_after_failures
                    and now - endpoint.failing_since >= self._policy.disable_after
                ):
                    endpoint.status = "disabled"
                    endpoint.disabled_reason = "failing"
                    endpoint.updated_at = now
            session.add(delivery)
            session.add(endpoint)


@dataclass
class DeliveryWorker:
    """Runs :meth:`WebhookDelivery.deliver_due` in a background thread until stopped."""

    delivery: WebhookDelivery
    poll_interval: float = 1.0
    on_error: Callable[[Exception], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="veilbill-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def run(self) -> None:
        """Deliver until stopped: at once while work is due, else every ``poll_interval`` seconds."""
        while not self._stop.is_set():
            try:
                sent = self.delivery.deliver_due()
            except Exception as error:  # a database outage must not kill the worker
                if self.on_error is not None:
                    self.on_error(error)
                sent = 0
            if not sent:
                self._stop.wait(self.poll_interval)
