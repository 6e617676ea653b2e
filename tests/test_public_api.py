"""The public surface: what `import meshrtc` promises, typed and documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import meshrtc

PUBLIC = sorted(name for name in vars(meshrtc) if not name.startswith("_") and name[0].isupper())


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
