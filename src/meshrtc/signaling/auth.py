"""Access tokens for the signaling server: HS256 JWTs that bind a peer id to one session.

A token says who may connect (``sub``, the peer id), where (``session``), until when (``exp``) and
with which grants (``publish``, ``subscribe``, ``data``). The server checks it from the WebSocket
URL's ``token`` query parameter before the upgrade (a few microseconds of HMAC, no JSON-RPC), and
checks every ``peer.announce`` of that connection against ``sub`` and ``session``. The secret is
shared by whoever issues tokens (``meshrtc token``) and the server; it never travels.

:class:`FailedTokenThrottle` keeps guessing slow: a client address whose tokens failed too often in
a window is refused at accept for a while, before its request head is even read.

Pure and synchronous: the clock is injected (``exp`` is checked against it, not PyJWT's own), so
expiry is tested without sleeping. docs/security.md tells the flow.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import jwt

from meshrtc.errors import ConfigError, MeshRtcError

__all__ = [
    "ALGORITHM",
    "DEFAULT_TTL",
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "AuthError",
    "Claims",
    "FailedTokenThrottle",
    "Grant",
    "TokenAuthority",
    "load_secret",
]

ALGORITHM: Final = "HS256"
#: RFC 7518 section 3.2: an HS256 key shorter than the hash is weaker than the hash.
MIN_SECRET_BYTES: Final = 32
DEFAULT_TTL: Final = 3600.0
SECRET_ENV: Final = "MESHRTC_AUTH_SECRET"
#: Longest token accepted; anything longer is refused before PyJWT parses it.
MAX_TOKEN_LENGTH: Final = 4096


class Grant(enum.StrEnum):
    """What a token allows. docs/security.md says which are enforced where."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    DATA = "data"


ALL_GRANTS: Final = frozenset(Grant)


class AuthError(MeshRtcError):
    """A token was missing, malformed, badly signed, expired or for someone else."""


@attrs.frozen
class Claims:
    """A verified token's content."""

    peer_id: str
    session_id: str
    expires_at: float
    grants: frozenset[Grant]


class TokenAuthority:
    """Issues and verifies tokens with one shared secret; ``clock`` is wall-clock seconds."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ConfigError("auth secret", "<hidden>", f"at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._clock = clock

    def issue(
        self,
        peer_id: str,
        session_id: str,
        *,
        ttl: float = DEFAULT_TTL,
        grants: Iterable[Grant | str] = ALL_GRANTS,
    ) -> str:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9:
            raise ConfigError("ttl", ttl, "a number of seconds > 0")
        try:
            granted = sorted({Grant(g) for g in grants})
        except ValueError:
            raise ConfigError("grants", list(grants), f"some of {sorted(ALL_GRANTS)}") from None
        now = self._clock()
        payload = {
            "sub": peer_id,
            "session": session_id,
            "iat": int(now),
            "exp": int(now + ttl),
            "grants": [g.value for g in granted],
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> Claims:
        """The token's claims, or :class:`AuthError` saying what is wrong with it."""
        if not token:
            raise AuthError("missing token (pass it as the 'token' query parameter)")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed token (too long)")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                # Expiry is ours to check, against the injected clock.
                options={"verify_exp": False, "verify_iat": False, "verify_sub": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad token signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"token not signed with {ALGORITHM}") from None
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        return self._claims(payload)

    def _claims(self, payload: Mapping[str, Any]) -> Claims:
        sub, session, exp = payload.get("sub"), payload.get("session"), payload.get("exp")
        grants = payload.get("grants", [])
        if not isinstance(sub, str) or not sub:
            raise AuthError("token has no 'sub' (peer id)")
        if not isinstance(session, str) or not session:
            raise AuthError("token has no 'session'")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AuthError("token has no 'exp'")
        if not isinstance(grants, list) or not all(g in ALL_GRANTS for g in grants):
            raise AuthError(f"token grants must be a list of {sorted(ALL_GRANTS)}")
        if self._clock() >= exp:
            raise AuthError("token expired")
        return Claims(sub, session, float(exp), frozenset(Grant(g) for g in grants))


def load_secret(path: str | os.PathLike[str] | None, *, env: Mapping[str, str]) -> bytes | None:
    """The secret from ``path`` (surrounding whitespace stripped), else ``$MESHRTC_AUTH_SECRET``."""
    if path is not None:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise MeshRtcError(f"cannot read auth secret {path}: {exc.strerror or exc}") from exc
        source = str(path)
    elif env.get(SECRET_ENV):
        secret, source = env[SECRET_ENV].strip().encode(), SECRET_ENV
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise MeshRtcError(
            f"auth secret from {source} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES}"
            " (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    return secret


@attrs.define
class FailedTokenThrottle:
    """Counts failed tokens per client address; too many in ``window`` locks it out for ``lockout``.

    ``now`` is monotonic seconds. The table is bounded (``max_addresses``): when full, the oldest
    entries go first, so an attacker cycling addresses cannot grow it without end.
    """

    max_failures: int = 5
    window: float = 10.0
    lockout: float = 30.0
    max_addresses: int = 4096
    _failures: dict[str, list[float]] = attrs.field(factory=dict, init=False)
    _locked_until: dict[str, float] = attrs.field(factory=dict, init=False)

    def locked(self, address: str, now: float) -> float:
        """Seconds left in ``address``'s lockout (0 when it may try)."""
        until = self._locked_until.get(address)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked_until[address]
            return 0.0
        return until - now

    def failed(self, address: str, now: float) -> bool:
        """Record a failure; True when this one locks the address out."""
        recent = [t for t in self._failures.pop(address, []) if now - t < self.window]
        recent.append(now)
        if len(recent) >= self.max_failures:
            self._locked_until[address] = now + self.lockout
            self._trim(self._locked_until)
            return True
        self._failures[address] = recent
        self._trim(self._failures)
        return False

    def _trim(self, table: dict[str, Any]) -> None:
        while len(table) > self.max_addresses:
            del table[next(iter(table))]
