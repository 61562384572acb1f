"""The platform: Redis job records, leases, scheduling, teams, admission, Celery dispatch, settings and the object store. No torch."""
