"""The Python job client and the `saeq` CLI: httpx, click, tqdm and pydantic only."""

from saeq.client.client import ApiError, Client, JobFailed

__all__ = ["ApiError", "Client", "JobFailed"]
