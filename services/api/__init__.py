"""The REST API (FastAPI). Imports no torch: it validates, stores inputs, records jobs and enqueues ids."""
