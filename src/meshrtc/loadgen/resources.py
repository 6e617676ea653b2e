"""What a process costs the machine, read without disturbing it (``/proc``; Linux).

Both ends of a soak read it (``bench/soak.py`` for the transport's process, the star generator's
child for its own), once a minute or so: no per-packet work.
"""

from __future__ import annotations

import os

__all__ = ["rss_kib"]


def rss_kib(pid: int | str = "self") -> int | None:
    """The resident set of ``pid`` (KiB), from ``/proc/<pid>/statm``; None where there is none."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024
