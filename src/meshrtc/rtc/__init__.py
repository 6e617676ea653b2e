"""The rtc layer: the only package that imports aiortc or asyncio (see docs/architecture.md)."""
