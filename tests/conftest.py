"""Shared test helpers.

``require_binary`` is the one way a test asks for a system component: under CI=true a missing one is
a failure (CI installs it from .ci/run), elsewhere it is a skip that names the package to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Property tests explore new examples on every developer run; CI draws the same examples each time,
# so a red CI run is reproducible from its log and never depends on the draw. No deadline anywhere:
# the suite runs on two shared cores, where one slow example says nothing about the code.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.load_profile("ci" if IN_CI else "dev")


def require_binary(name: str, debian_package: str) -> str:
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name!r} not found; install Debian's {debian_package} (.ci/run does)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_component(missing: list[str], what: str) -> None:
    """Like :func:`require_binary` for a component found some other way: ``missing`` lists what
    is absent (with the Debian package to install); a failure under CI=true, else a skip."""
    if not missing:
        return
    message = f"{what}: missing {', '.join(missing)} (.ci/run installs them)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _ice_on_loopback_only() -> Iterator[None]:
    """Every test keeps ICE host candidates on 127.0.0.1 (aioice would offer eth0's address)."""
    from meshrtc.rtc.host_candidates import LOOPBACK, restricted_host_addresses

    with restricted_host_addresses(LOOPBACK):
        yield
