"""kugelwire benchmarks: plain scripts, run ``python -m benchmarks.run_all`` (see README.md)."""
