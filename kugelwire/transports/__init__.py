"""I/O adapters (asyncio, trio, blocking sockets). They only move bytes and drive timers."""
