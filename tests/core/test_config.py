"""Settings that must hold before a process starts: production refuses development shortcuts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.config import DEVELOPMENT_URL_SECRET, Settings


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"storage": {"backend": "local"}}, "TESSERA_STORAGE__URL_SECRET"),
        ({"storage": {"backend": "local", "url_secret": DEVELOPMENT_URL_SECRET}}, "TESSERA_STORAGE__URL_SECRET"),
        ({"storage": {"backend": "s3"}, "webhooks": {"allow_private": True}}, "TESSERA_WEBHOOKS__ALLOW_PRIVATE"),
        ({"storage": {"backend": "s3"}, "webhooks": {"allow_http": True}}, "TESSERA_WEBHOOKS__ALLOW_HTTP"),
    ],
)
def test_production_refuses_development_shortcuts(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(environment="production", **overrides)  # type: ignore[arg-type]
    Settings(environment="development", **overrides)  # type: ignore[arg-type]


def test_production_starts_with_its_own_secret_or_on_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(environment="production", storage={"backend": "local", "url_secret": "f" * 64})
    # On S3 the URL secret is not used (the store presigns), so the built-in one is no risk there.
    assert Settings(environment="production", storage={"backend": "s3"})
    monkeypatch.setenv("TESSERA_ENVIRONMENT", "production")
    monkeypatch.setenv("TESSERA_WEBHOOKS__ALLOW_HTTP", "true")
    with pytest.raises(ValidationError, match="TESSERA_WEBHOOKS__ALLOW_HTTP"):
        Settings()
