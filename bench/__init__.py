"""Benchmarks for tcpchatd (never part of the test run)."""
