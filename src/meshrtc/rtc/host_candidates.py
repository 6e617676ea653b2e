"""Which local addresses ICE offers as host candidates.

aioice offers every interface address *except* loopback and has no per-connection option to choose.
meshrtc's tests, demo and benches must keep all media on 127.0.0.1, and a deployment may want to pin
one interface, so this replaces aioice's module-level address lookup, process-wide (aioice reads it
once per gathering, on the bridge's asyncio thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import aioice.ice

__all__ = ["LOOPBACK", "host_addresses", "restricted_host_addresses", "set_host_addresses"]

log = logging.getLogger(__name__)

LOOPBACK: tuple[str, ...] = ("127.0.0.1",)

_aioice_lookup: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
_override: tuple[str, ...] | None = None


def _lookup(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _override is None:
        return _aioice_lookup(use_ipv4, use_ipv6)
    return [a for a in _override if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer exactly ``addresses`` as host candidates from now on; ``None`` restores aioice's choice."""
    global _override
    _override = None if addresses is None else tuple(addresses)
    aioice.ice.get_host_addresses = _lookup
    log.debug("ICE host addresses: %s", "aioice default" if _override is None else _override)


def host_addresses() -> tuple[str, ...] | None:
    """The current override, or ``None`` when aioice chooses."""
    return _override


@contextmanager
def restricted_host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    previous = _override
    set_host_addresses(addresses)
    try:
        yield
    finally:
        set_host_addresses(previous)
