"""Benchmarks that print numbers and write JSON under benchmarks/results/."""
