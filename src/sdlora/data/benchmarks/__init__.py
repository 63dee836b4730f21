"""Registered benchmarks (one module each): each builds a `BenchmarkData`."""
