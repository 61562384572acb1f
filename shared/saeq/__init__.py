"""saeq: queue sparse-autoencoder experiments on shared GPU nodes.

Importing `saeq` imports no torch; the ML job modules live in `saeq.jobs` and import it lazily.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Client":
        from saeq.client.client import Client

        return Client
    raise AttributeError(name)
