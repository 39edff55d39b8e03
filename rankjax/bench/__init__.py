"""Benchmarks, run as programs: `python -m rankjax.bench <name> [flags]`.

Each benchmark is a module with `main(argv) -> dict` that prints a table and
one JSON line; `rankjax.bench._common` holds what they share (thread
pinning, timing, memory, bandwidth and matmul probes, the report).
"""
