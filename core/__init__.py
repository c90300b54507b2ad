"""Tessera core: the domain, storage and all ML. Never imports fastapi or celery."""
