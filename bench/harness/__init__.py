"""Benchmark harness behind bench/run.py: servers, wrk runs and reports."""
