"""Benchmarks that print numbers (not pass/fail tests). Run all with `make bench`."""
