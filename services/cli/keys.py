"""The ``tessera keys`` group: create, list and revoke API keys (stored as hashes in Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from core.stores.keys import ApiKeyStore

keys_app = typer.Typer(help="API keys per tenant (stored as hashes in Redis).", no_args_is_help=True)


def _key_store() -> ApiKeyStore:
    import redis

    from core.config import get_settings
    from core.stores.keys import ApiKeyStore

    return ApiKeyStore(redis.Redis.from_url(get_settings().redis.dsn()))


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")]) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    record, secret = _key_store().create(tenant)
    typer.echo(f"{record.id}  tenant={record.tenant}\n{secret}")


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List keys (id, tenant, prefix, created, revoked); secrets are never shown."""
    for record in _key_store().list(tenant):
        revoked = f"revoked {record.revoked_at.isoformat()}" if record.revoked_at else "active"
        typer.echo(f"{record.id}  {record.tenant}  {record.prefix}…  {record.created_at.isoformat()}  {revoked}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    record = _key_store().revoke(key_id)
    typer.echo(f"{record.id} revoked")
