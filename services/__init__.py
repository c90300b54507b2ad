"""Tessera services: the HTTP API, the Celery worker and the command line that composes them."""
