"""Which local addresses ICE offers as host candidates.

aioice offers every interface address *except* loopback and has no per-connection option to choose:
``Connection.gather_candidates`` calls its module-level ``get_host_addresses(use_ipv4, use_ipv6)``.
meshrtc's tests, demo and benches must keep all media on 127.0.0.1, and two transports in one
process may pin different interfaces, so the choice is made per gathering:

* :func:`install` (run by :func:`~meshrtc.rtc.bridge.open_bridge`, idempotent, never at import)
  replaces aioice's lookup with one that answers, in order: the addresses of the gathering running
  now (:func:`gathering_on`, a context variable, so two connections gathering at once on the same
  loop each see their own), else the process default (:func:`set_host_addresses`), else aioice's.
* :func:`gathering_on` scopes addresses to the code inside it; the aiortc adapter's
  ``use_host_addresses(pc, ...)`` wraps one RTCPeerConnection's gathering in it.
* :func:`set_host_addresses` / :func:`restricted_host_addresses` set the process default, for a
  test session or a bench that wants every connection on loopback.

aioice reads the lookup on the bridge's asyncio thread, once per gathering; asyncio tasks copy the
context they are created in, so the tasks aiortc spawns for one gathering inherit its addresses.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import aioice.ice

__all__ = [
    "LOOPBACK",
    "gathering_on",
    "host_addresses",
    "install",
    "installed",
    "restricted_host_addresses",
    "set_host_addresses",
]

log = logging.getLogger(__name__)

LOOPBACK: tuple[str, ...] = ("127.0.0.1",)

#: The module global aioice's ``Connection.gather_candidates`` calls (named in the contract test).
AIOICE_LOOKUP = "get_host_addresses"

_aioice_lookup: Callable[[bool, bool], list[str]] = getattr(aioice.ice, AIOICE_LOOKUP)
_override: tuple[str, ...] | None = None
_scoped: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "meshrtc_ice_host_addresses", default=None
)


def _lookup(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _scoped.get()
    if chosen is None:
        chosen = _override
    if chosen is None:
        return _aioice_lookup(use_ipv4, use_ipv6)
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install() -> None:
    """Route aioice's host-address lookup through meshrtc's (idempotent, process-wide).

    Until some address is chosen (scoped or default) the answer is aioice's own, so installing
    changes nothing for a connection that chose none.
    """
    if getattr(aioice.ice, AIOICE_LOOKUP) is not _lookup:
        setattr(aioice.ice, AIOICE_LOOKUP, _lookup)


def installed() -> bool:
    """Whether aioice currently asks :mod:`meshrtc.rtc.host_candidates` (for tests)."""
    return getattr(aioice.ice, AIOICE_LOOKUP) is _lookup


@contextmanager
def gathering_on(addresses: Sequence[str] | None) -> Iterator[None]:
    """Gather host candidates on exactly ``addresses`` inside the block (``None``: the default)."""
    token = _scoped.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _scoped.reset(token)


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer ``addresses`` as host candidates wherever a gathering chose none; ``None`` restores
    aioice's choice. Process-wide: for test sessions and benches, not for one transport."""
    global _override
    _override = None if addresses is None else tuple(addresses)
    install()
    log.debug("ICE host addresses: %s", "aioice default" if _override is None else _override)


def host_addresses() -> tuple[str, ...] | None:
    """The addresses a gathering here would use: the scoped ones, else the default (``None``:
    aioice chooses)."""
    scoped = _scoped.get()
    return _override if scoped is None else scoped


@contextmanager
def restricted_host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Make ``addresses`` the process default inside the block, restoring the previous one after."""
    previous = _override
    set_host_addresses(addresses)
    try:
        yield
    finally:
        set_host_addresses(previous)
