"""Helpers every figure shares: running a measurement in a fresh process, the machine's matmul peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_worker(module: str, args: dict, threads: int, timeout: float = 3600) -> dict:
    """``python -m MODULE worker --key=value ...`` in a fresh process; returns the JSON it wrote.

    A fresh process per measurement: peak memory only ever grows within a process, and a model
    loaded earlier would leave its memory and threads behind.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", module, "worker", *argv, "--json", str(out)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RuntimeError(f"{module} {args} failed (exit {done.returncode}):\n{tail}")
        return json.loads(out.read_text())


def matmul_peak_gflops(threads: int, sizes=(256, 512, 1024, 2048), repeats: int = 8, dtype=None) -> float:
    """The best fp32 (or DTYPE) ``torch.matmul`` rate of this machine at THREADS threads, in GFLOP/s.

    MFU's denominator: the fastest square product (2 n^3 FLOPs) among SIZES, at the thread count
    the training used, best of REPEATS rounds (other work on a shared machine can only slow a
    round down). Several sizes because on a busy machine the big products are starved of memory
    bandwidth while cache-sized ones still run at the cores' FMA peak (measured here: 1 thread,
    ~110 GFLOP/s at n = 256-512, ~42 at n = 2048 under load ~10). Taking the best makes the MFU
    the conservative one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best_rate = 0.0
        for n in sizes:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            torch.matmul(a, b)  # warm-up: thread pool and caches
            best = float("inf")
            for _ in range(repeats if n <= 1024 else 3):
                started = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - started)
            best_rate = max(best_rate, 2 * n**3 / best / 1e9)
        return best_rate
    finally:
        torch.set_num_threads(before)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")
