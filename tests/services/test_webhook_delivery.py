"""Webhook deliveries against a real receiver on loopback: retries keep their id, redirects are not
followed, 410 stops, and a name that starts resolving to a private address is refused at delivery."""

from __future__ import annotations

import json

import pytest
import redis
import standardwebhooks

from core.config import WebhookSettings
from core.errors import InvalidRequestError
from core.stores.webhook_store import Delivery, WebhookStore
from core.submissions import Policy
from services.worker.webhook_delivery import attempt_delivery
from tests.fixtures.receiver import receiver

LOCAL = WebhookSettings(allow_private=True, allow_http=True, timeout_seconds=5, retry_delays_seconds=[0, 0, 0, 0])


@pytest.fixture
def store(redis_client: redis.Redis) -> WebhookStore:
    return WebhookStore(redis_client)


def _delivery(store: WebhookStore, url: str, *, retry: bool = True) -> Delivery:
    body = json.dumps({"type": "job.completed", "timestamp": "2026-01-01T00:00:00Z", "data": {"id": "job_1"}})
    delivery = Delivery(id="msg_1", job_id="job_1", tenant="t", url=url, type="job.completed", body=body, retry=retry)
    store.save(delivery)
    return delivery


def _run_until_done(store: WebhookStore, delivery_id: str, settings: WebhookSettings = LOCAL) -> Delivery:
    attempt_delivery(store, settings, delivery_id)
    for _ in range(10):
        for due in store.pop_due(now=float("inf")):
            attempt_delivery(store, settings, due)
    final = store.get(delivery_id)
    assert final is not None
    return final


def test_fails_twice_then_succeeds_with_the_same_id_and_valid_signatures(store: WebhookStore) -> None:
    with receiver(script=[500, 503]) as hook:
        final = _run_until_done(store, _delivery(store, hook.url).id)
    assert final.status == "succeeded" and final.attempts == 3
    assert [r.headers["webhook-id"] for r in hook.requests] == ["msg_1"] * 3
    secret = store.secret("t")
    for request in hook.requests:
        standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    log = store.attempts("job_1")
    assert [a.status_code for a in log] == [500, 503, 200]
    assert log[0].next_retry_at is not None and log[2].next_retry_at is None
    assert all(a.latency_ms is not None for a in log)


def test_redirects_are_not_followed(store: WebhookStore) -> None:
    with receiver() as elsewhere, receiver(script=[302], redirect_to=elsewhere.url) as hook:
        attempt_delivery(store, LOCAL, _delivery(store, hook.url).id)
    assert len(hook.requests) == 1 and elsewhere.requests == []
    assert store.attempts("job_1")[0].status_code == 302 and store.attempts("job_1")[0].next_retry_at is not None


def test_gone_stops_retries(store: WebhookStore) -> None:
    with receiver(script=[410, 200]) as hook:
        final = _run_until_done(store, _delivery(store, hook.url).id)
    assert final.status == "gone" and len(hook.requests) == 1


def test_events_other_than_completed_are_not_retried(store: WebhookStore) -> None:
    with receiver(script=[500]) as hook:
        final = _run_until_done(store, _delivery(store, hook.url, retry=False).id)
    assert final.status == "failed" and len(hook.requests) == 1


def test_retries_stop_after_the_schedule(store: WebhookStore) -> None:
    settings = LOCAL.model_copy(update={"retry_delays_seconds": [0, 0]})
    with receiver(script=[500] * 10) as hook:
        final = _run_until_done(store, _delivery(store, hook.url).id, settings)
    assert final.status == "failed" and len(hook.requests) == 3


def test_private_address_refused_at_create_and_at_delivery_after_rebinding(store: WebhookStore) -> None:
    strict = WebhookSettings(allow_private=False, allow_http=True, retry_delays_seconds=[])
    with pytest.raises(InvalidRequestError) as err:
        Policy(allow_http_webhooks=True).check_webhook("http://127.0.0.1:9/hook")
    assert err.value.code == "webhook_url_forbidden"
    with receiver() as hook:
        port = hook.url.split(":")[2].split("/")[0]
        url = f"http://hooks.example.test:{port}/hook"
        # At create time the name resolves to a public address: accepted.
        Policy(allow_http_webhooks=True, resolver=lambda h, p: ["93.184.216.34"]).check_webhook(url)
        delivery = _delivery(store, url, retry=False)
        # At delivery it resolves to loopback (DNS rebinding): refused, nothing is sent.
        attempt_delivery(store, strict, delivery.id, resolver=lambda h, p: ["127.0.0.1"])
    assert hook.requests == []
    attempt = store.attempts("job_1")[0]
    assert attempt.status_code is None and attempt.error is not None and "not globally routable" in attempt.error


def test_delivery_connects_to_the_vetted_address_with_the_original_host(store: WebhookStore) -> None:
    with receiver() as hook:
        port = hook.url.split(":")[2].split("/")[0]
        url = f"http://hooks.example.test:{port}/hook"
        attempt_delivery(store, LOCAL, _delivery(store, url).id, resolver=lambda h, p: ["127.0.0.1"])
    assert len(hook.requests) == 1 and hook.requests[0].headers["host"] == f"hooks.example.test:{port}"


def test_secret_rotation(store: WebhookStore) -> None:
    first = store.secret("t")
    assert store.secret("t") == first
    rotated = store.rotate_secret("t")
    assert rotated != first and store.secret("t") == rotated
