"""A frozen copy of the asyncio runner as it was before the sans-IO server core; only
``benchmarks/bench_scale.py`` uses it (the "old path" the new asyncio backend is compared to)."""
