"""TLS contexts for the signaling server (``--certfile/--keyfile``) and its clients (``cafile``).

One place decides what "TLS on" means, so ``meshrtc serve``, ``meshrtc signal``, a library user's
:class:`~meshrtc.signaling.server.SignalingServer` and every client agree: the standard library's
defaults (TLS 1.2 or newer, its cipher choice, and on the client certificate and host name checks
against the system store, or only ``cafile`` when one is given). There is deliberately no way to
turn verification off: a client that trusts any certificate trusts whoever sits on the path, and a
self-signed deployment only needs its CA file passed as ``cafile``.

Loading files fails here, with the file named, rather than at the first connection: a wrong key
path should stop a server at start, not make every handshake fail. docs/security.md, "TLS".
"""

from __future__ import annotations

import ssl
from pathlib import Path

from meshrtc.errors import ConfigError

__all__ = ["client_context", "server_context"]


def _existing_file(field: str, path: str | Path) -> str:
    if not isinstance(path, str | Path) or not str(path):
        raise ConfigError(field, path, "the path of a PEM file")
    if not Path(path).is_file():
        raise ConfigError(field, str(path), "the path of an existing PEM file")
    return str(path)


def server_context(certfile: str | Path, keyfile: str | Path | None = None) -> ssl.SSLContext:
    """The context a server presents ``certfile`` (with its chain) and ``keyfile`` with.

    ``keyfile`` may be left out when ``certfile`` holds the key too. A key that does not match the
    certificate, or a file that is not PEM, raises :class:`ConfigError` naming the files.
    """
    cert = _existing_file("certfile", certfile)
    key = None if keyfile is None else _existing_file("keyfile", keyfile)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        files = cert if key is None else f"{cert} and {key}"
        raise ConfigError(
            "certfile", files, f"a PEM certificate chain and its private key ({exc.reason or exc})"
        ) from None
    return context


def client_context(cafile: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context: the system store, or only the CAs in ``cafile`` when given."""
    if cafile is None:
        return ssl.create_default_context()
    path = _existing_file("cafile", cafile)
    try:
        return ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(
            "cafile", path, f"a PEM file of CA certificates ({exc.reason or exc})"
        ) from None
