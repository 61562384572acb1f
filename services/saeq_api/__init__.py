"""saeq's HTTP API (FastAPI). It never imports torch: jobs run on the workers."""
