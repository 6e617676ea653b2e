"""The exception hierarchy.

Every error meshrtc raises on purpose derives from :class:`MeshRtcError`, so an application can catch
"anything meshrtc refused" in one clause and still tell configuration mistakes from runtime failures.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MeshRtcError"]


class MeshRtcError(Exception):
    """Root of every error meshrtc raises deliberately."""


class ConfigError(MeshRtcError, ValueError):
    """A configuration value is outside what meshrtc supports.

    It names the field, the offending value and what would have been accepted, because a config error
    is read by a person fixing a file, not by code.
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is invalid: allowed {allowed}")
