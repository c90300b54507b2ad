"""Standard Webhooks: secrets, signing, verification for receivers, and the SSRF guard for targets.

Signing follows the spec exactly (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64
HMAC-SHA256 of "{id}.{timestamp}.{body}">``, secrets ``whsec_<base64>``), so receivers can verify with the
reference ``standardwebhooks`` library or with ``verify`` below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from core.errors import InvalidRequestError, ServiceError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300
# Cloud metadata and host-agent endpoints. Refused even when private targets are allowed for development: a
# webhook that reaches one hands the instance's credentials to whoever chose the URL. 169.254.169.254 (AWS, GCP,
# Azure, OpenStack), 169.254.170.2 (ECS task credentials), 100.100.100.200 (Alibaba Cloud), 168.63.129.16 (Azure
# WireServer, a globally routable address), fd00:ec2::254 (AWS over IPv6).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "168.63.129.16", "fd00:ec2::254")
)

Resolver = Callable[[str, int], list[str]]


class WebhookVerificationError(ServiceError):
    code = "webhook_verification_failed"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery attempt."""
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (the timestamp is that of this attempt)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """For receivers: raise ``WebhookVerificationError`` unless ``body`` was signed with ``secret`` recently.

    Verify the raw body before parsing it: re-serialised JSON does not match the signature.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts_text, signatures = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
        timestamp = int(ts_text)
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationError("missing or malformed webhook headers") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookVerificationError("no matching webhook signature")


def _forbidden(field: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{field}: {message}", field=field, code="webhook_url_forbidden")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


# NAT64 prefixes carry an IPv4 address in their low 32 bits: judged by that address (a gateway would reach it).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a connection would really reach: IPv4-mapped and NAT64 IPv6 addresses as their IPv4 one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if any(ip in net for net in _NAT64):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public_address(address: str) -> bool:
    """Whether ``address`` is globally routable unicast and no metadata endpoint (an allow-list: shared address
    space ``100.64.0.0/10``, documentation, benchmarking and every other special-purpose range is refused)."""
    ip = _plain(address)
    return ip.is_global and not ip.is_multicast and ip not in METADATA_ADDRESSES


def is_never_allowed(address: str) -> bool:
    """Link-local (``169.254.0.0/16``, ``fe80::/10``), unspecified, multicast and metadata addresses: refused even
    when ``webhooks.allow_private`` lets development targets on loopback and private networks through."""
    ip = _plain(address)
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip in METADATA_ADDRESSES


def vet_url(
    url: str,
    *,
    allow_private: bool,
    allow_http: bool,
    resolver: Resolver = system_resolver,
    field: str = "webhook",
) -> list[str]:
    """Check a webhook target and return the addresses it may be reached at.

    Refuses non-https URLs (unless ``allow_http``), URLs with credentials, hosts that resolve to any address that
    is not globally routable (unless ``allow_private``: then loopback and private networks pass) and, always, hosts
    that resolve to a link-local or metadata address (``is_never_allowed``). Call it when
    the URL is given and again right before each delivery, then connect to a returned address: a DNS
    answer that changed in between (rebinding) cannot reach an internal host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _forbidden(field, f"must be an absolute https URL, got {url!r}")
    if parts.scheme == "http" and not allow_http:
        raise _forbidden(field, "must use https (the operator has not enabled webhooks.allow_http)")
    if parts.username or parts.password:
        raise _forbidden(field, "must not carry credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(parts.hostname, port)
    except OSError as exc:
        raise _forbidden(field, f"host {parts.hostname!r} does not resolve") from exc
    if not addresses:
        raise _forbidden(field, f"host {parts.hostname!r} does not resolve")
    never = [a for a in addresses if is_never_allowed(a)]
    if never:
        raise _forbidden(
            field,
            f"host {parts.hostname!r} resolves to a link-local or metadata address ({never[0]}); refused (SSRF "
            "guard, also with webhooks.allow_private)",
        )
    if not allow_private:
        bad = [a for a in addresses if not is_public_address(a)]
        if bad:
            raise _forbidden(
                field,
                f"host {parts.hostname!r} resolves to an address that is not globally routable ({bad[0]}); refused "
                "(SSRF guard)",
            )
    return addresses


def post_vetted(url: str, address: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> int:
    """POST ``body`` to ``url`` over a connection to ``address`` (a vetted IP of its host); returns the status.

    The Host header and TLS server name stay those of the URL, so virtual hosts and certificates work,
    but no second DNS lookup happens. Redirects are not followed (a 3xx counts as a failure).
    """
    import httpx

    parts = urlsplit(url)
    host = parts.hostname or ""
    target = httpx.URL(url).copy_with(host=address)
    host_header = parts.netloc.rsplit("@", 1)[-1]
    with httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        response = client.post(
            target, content=body, headers={**headers, "host": host_header}, extensions={"sni_hostname": host}
        )
    return response.status_code
