"""Benchmarks that drive a component over its real interface and print latency and throughput figures."""
