"""A DNS resolver for S3 endpoints that a record named: every address a lookup
returns is checked (:func:`atdata_runtime.net.hosts.refuse_address`) before
aiobotocore's HTTP client (aiohttp) may connect to it.

:func:`~atdata_runtime.atmosphere.load.entry_shards` already refuses an endpoint
whose host resolves to a loopback, private, link-local or otherwise non-global
address; this resolver repeats the check on every lookup s3fs makes while reading,
so that a name that resolves to a public address when checked and to an internal
one when connected (DNS rebinding) is refused too. It is given to aiobotocore as
``AioConfig(connector_args={"resolver": CheckedResolver()})`` through s3fs's
``config_kwargs``. Needs the ``s3`` extra (aiohttp); import it only then.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from ..net.hosts import refuse_address

__all__ = ["CheckedResolver", "RefusedAddressError"]


class RefusedAddressError(OSError):
    """A lookup returned an address that a URL from the network may not reach
    (an ``OSError``: aiohttp reports it as a failed connection, naming the host)."""

    rule = "S3_ENDPOINT"


class CheckedResolver(AbstractResolver):
    """``getaddrinfo`` on the event loop, refusing the whole answer when any
    address in it is refused (``RefusedAddressError``). Stateless: pickles (a
    DataLoader worker gets its own)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, family=family
        )
        out: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            why = refuse_address(address)
            if why is not None:
                raise RefusedAddressError(
                    f"S3 endpoint host {host!r} resolves to {why} ({address}), "
                    "which a URL from a record may not reach [S3_ENDPOINT]"
                )
            out.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not out:
            raise RefusedAddressError(f"S3 endpoint host {host!r} has no address")
        return out

    async def close(self) -> None:
        pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (CheckedResolver, ())
