"""Job entry points: pure functions taking specs, values and callbacks (no Celery, no I/O)."""
