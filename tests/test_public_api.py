"""The public surface: what `import meshrtc` promises, typed and documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import meshrtc

PUBLIC = sorted(name for name in meshrtc.__all__ if name[0].isupper())


def test_all_lists_every_exported_name() -> None:
    eager = {n for n in vars(meshrtc) if not n.startswith("_") and n[0].isupper()}
    assert eager <= set(meshrtc.__all__)
    for name in meshrtc.__all__:
        assert getattr(meshrtc, name) is not None
    with pytest.raises(AttributeError, match="NoSuchName"):
        meshrtc.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_package_is_typed() -> None:
    assert (Path(meshrtc.__file__).parent / "py.typed").is_file()


def test_every_public_name_is_documented_and_errors_share_one_root() -> None:
    assert PUBLIC, "nothing exported"
    for name in PUBLIC:
        obj = getattr(meshrtc, name)
        assert inspect.getdoc(obj), f"meshrtc.{name} has no docstring"
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, meshrtc.MeshRtcError), f"{name} is not a MeshRtcError"


def test_core_import_does_not_start_anything() -> None:
    """Importing the library must not configure logging or spawn threads."""
    import logging
    import threading

    assert not logging.getLogger("meshrtc").handlers
    assert all(t.name == "MainThread" or t.daemon for t in threading.enumerate())
