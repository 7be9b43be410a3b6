"""Benchmarks: each bench_*.py prints JSON lines and writes bench/results/<name>.json.

Convention: every figure is measured next to a reference measured in the same process and run
(a plain PyTorch loop, one-file-per-image storage, ...), and reported as a ratio, because absolute
times on a shared machine are noise. Tests never assert wall-clock times; benches never gate CI.
"""
