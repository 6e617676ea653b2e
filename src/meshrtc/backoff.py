"""Backoff: the delays between reconnect attempts (signaling client, rebuilt peer links).

Its own module, below :mod:`meshrtc.config`, because the transport configuration carries one
(``TransportConfig.signaling_backoff``) and the signaling client, which uses it, imports the
configuration: kept in the client module it would be an import cycle.
"""

from __future__ import annotations

from typing import Any

import attrs

from meshrtc.errors import ConfigError

__all__ = ["Backoff"]

#: ``factor ** attempt`` is computed with the attempt capped here: a client that keeps retrying
#: for hours (media still flows, docs/security.md) would otherwise overflow a float.
_MAX_EXPONENT = 64


def _check_backoff(inst: Backoff, attribute: attrs.Attribute[Any], value: object) -> None:
    lowest = 0 if attribute.name in ("tries", "jitter") else 1 if attribute.name == "factor" else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lowest:
        raise ConfigError(f"backoff.{attribute.name}", value, f"a number >= {lowest}")
    if attribute.name == "tries" and not isinstance(value, int):
        raise ConfigError("backoff.tries", value, "an integer >= 0")


@attrs.frozen
class Backoff:
    """Reconnect delays: ``min(initial * factor**n, maximum) * (1 + jitter * U[0, 1))``.

    Jitter is applied on top of the cap so that many clients that lost the same server do not come
    back in lockstep even once they all reached the cap. ``tries`` counts attempts after a loss;
    it starts again from zero after every successful announce.
    """

    tries: int = attrs.field(default=5, validator=_check_backoff)
    initial: float = attrs.field(default=1.0, validator=_check_backoff)
    factor: float = attrs.field(default=2.0, validator=_check_backoff)
    maximum: float = attrs.field(default=30.0, validator=_check_backoff)
    jitter: float = attrs.field(default=0.25, validator=_check_backoff)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt`` (0-based); ``rand`` is uniform in [0, 1)."""
        base = min(self.initial * self.factor ** min(attempt, _MAX_EXPONENT), self.maximum)
        return base * (1.0 + self.jitter * rand)
