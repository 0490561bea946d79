"""Benchmarks (not run by CI): `python tests/bench/run.py [--quick] [--only NAME]`."""
