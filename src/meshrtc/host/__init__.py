"""Hosting sessions in worker processes (issue 15; docs/host.md).

A supervisor process owns the public side (HTTP, signaling hub, placement); session work runs in
worker processes that are children of the supervisor's nursery and talk to it over a small,
versioned control protocol (:mod:`meshrtc.host.control`). This package holds the foundation: the
protocol, the supervised :class:`~meshrtc.host.worker.WorkerProcess` and the worker's main.
"""

from __future__ import annotations
