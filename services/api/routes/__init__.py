"""HTTP routes, one module per resource."""

from services.api.routes import concepts, files, health, jobs, objects, webhooks

__all__ = ["concepts", "files", "health", "jobs", "objects", "webhooks"]
