"""Benchmarks: ``python -m bench.run`` runs every ``bench/bench_*.py`` and prints measured ratios."""
