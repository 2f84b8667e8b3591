"""Benchmarks of shoal: `python -m bench.engine` measures the engine against the raw disk."""
