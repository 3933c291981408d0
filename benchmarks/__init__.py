"""Benchmarks for hesso_jax: discovery scaling, compressed-model latency, optimizer step overhead.

Run all with ``python -m benchmarks.run_all [--small]``; each writes results/bench_<name>.json.
"""
