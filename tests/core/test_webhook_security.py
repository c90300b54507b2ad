"""Standard Webhooks signing (checked with the reference library) and the SSRF guard."""

from __future__ import annotations

import time

import pytest
import standardwebhooks

from core.errors import InvalidRequestError
from core.webhook_security import SECRET_PREFIX, WebhookVerificationError, new_secret, signed_headers, verify, vet_url


def test_signatures_verify_with_the_reference_library() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    body = b'{"type":"job.completed","data":{"id":"job_1"}}'
    headers = signed_headers(secret, "msg_abc", body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {"type": "job.completed", "data": {"id": "job_1"}}
    verify(secret, headers, body)


def test_verify_rejects_tampering_other_keys_and_old_timestamps() -> None:
    secret = new_secret()
    body = b"{}"
    headers = signed_headers(secret, "msg_abc", body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, b'{"x":1}')
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, body)
    old = signed_headers(secret, "msg_abc", body, timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError):
        verify(secret, old, body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {}, body)


def _resolve_to(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.10",
        "172.16.5.5",
        "169.254.169.254",
        "::1",
        "fd00:ec2::254",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "100.64.0.1",  # shared address space (carrier-grade NAT): not globally routable
        "100.100.100.200",  # a cloud metadata endpoint inside it
        "168.63.129.16",  # a metadata endpoint on a globally routable address
        "192.0.2.10",  # documentation
        "198.18.0.1",  # benchmarking
        "240.0.0.1",  # reserved
        "224.0.0.1",  # multicast
        "fe80::1",
        "fc00::1",
        "2001:db8::1",  # documentation
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::7f00:1",  # local-use NAT64 of 127.0.0.1
    ],
)
def test_non_public_targets_are_refused(address: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        vet_url("https://hooks.example.com/x", allow_private=False, allow_http=False, resolver=_resolve_to(address))
    assert err.value.code == "webhook_url_forbidden" and err.value.field == "webhook"


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1", "64:ff9b::101:101"]
)
def test_globally_routable_targets_pass(address: str) -> None:
    assert vet_url("https://h.example.com/x", allow_private=False, allow_http=False, resolver=_resolve_to(address))


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "169.254.170.2", "100.100.100.200", "168.63.129.16", "fd00:ec2::254", "fe80::1"]
)
def test_link_local_and_metadata_targets_are_refused_even_when_private_ones_are_allowed(address: str) -> None:
    with pytest.raises(InvalidRequestError, match="link-local or metadata") as err:
        vet_url("http://h/latest/meta-data/", allow_private=True, allow_http=True, resolver=_resolve_to(address))
    assert err.value.code == "webhook_url_forbidden"


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.1.2", "::1"])
def test_the_development_flag_lets_loopback_and_private_targets_through(address: str) -> None:
    assert vet_url("http://h/x", allow_private=True, allow_http=True, resolver=_resolve_to(address)) == [address]


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    with pytest.raises(InvalidRequestError):
        vet_url(
            "https://h.example.com",
            allow_private=False,
            allow_http=False,
            resolver=_resolve_to("93.184.216.34", "10.0.0.1"),
        )


def test_scheme_credentials_and_operator_switches() -> None:
    public = _resolve_to("93.184.216.34")
    assert vet_url("https://h.example.com/x", allow_private=False, allow_http=False, resolver=public) == [
        "93.184.216.34"
    ]
    for url in ("http://h.example.com/x", "ftp://h.example.com", "https://user:pw@h.example.com", "/relative"):
        with pytest.raises(InvalidRequestError):
            vet_url(url, allow_private=False, allow_http=False, resolver=public)
    assert vet_url("http://h.example.com/x", allow_private=False, allow_http=True, resolver=public)
    assert vet_url("https://h/x", allow_private=True, allow_http=False, resolver=_resolve_to("127.0.0.1"))


def test_unresolvable_host_is_refused() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(InvalidRequestError, match="does not resolve"):
        vet_url("https://nowhere.invalid", allow_private=False, allow_http=False, resolver=fail)
