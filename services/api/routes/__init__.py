"""HTTP routes, one module per resource (and docs: the documentation pages)."""

from services.api.routes import concepts, docs, files, health, jobs, objects, webhooks

__all__ = ["concepts", "docs", "files", "health", "jobs", "objects", "webhooks"]
