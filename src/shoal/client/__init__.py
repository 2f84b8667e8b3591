"""client: talk to daemons. `Client` (blocking) and `AsyncClient` (asyncio)."""

from shoal.client.client import AsyncClient, Client, ObjectInfo

__all__ = ["AsyncClient", "Client", "ObjectInfo"]
