"""The GPU worker: Celery tasks that run trainings and generations, one at a time per process."""
