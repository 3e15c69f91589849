"""Benchmarks and studies: scripts run from the repository root (python benchmarks/NAME.py);
importable as ``benchmarks.NAME`` by the tests, which run from the root too."""
