"""The sans-IO media core: pure classes, time passed in, no trio, no asyncio, no sockets."""
