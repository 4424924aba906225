"""I/O adapters (asyncio, trio, anyio, blocking sockets). They only move bytes and drive timers."""
