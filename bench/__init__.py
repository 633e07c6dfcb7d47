"""Benchmarks and load runs of the service, and the process harness the tests share."""
