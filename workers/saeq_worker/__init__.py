"""Celery workers: thin adapters that run saeq's job functions and do their I/O."""
