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


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """The best fp32 ``torch.matmul`` rate of this machine at THREADS threads, in GFLOP/s.

    MFU's denominator: what this CPU really sustains on a large square product (2 n^3 FLOPs), at
    the thread count the training used; the best of a few rounds, since other work on a shared
    machine can only slow a round down.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up: thread pool and caches
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - started)
        return 2 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(before)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")
