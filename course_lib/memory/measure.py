"""The planner checked against reality: the peak memory of a few real training steps.

``measure_here`` trains for a few steps in *this* process and returns its peak memory rise;
``measure_peak`` runs it in a fresh subprocess per call (``python -m course_lib.memory measure``),
because a process's peak resident memory only ever goes up: a second measurement in the same
process would see the first one's peak. ``compare`` puts the planner's estimate beside each method's
measured peak.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

from course_lib import models, procmem, report, train
from course_lib.memory.plan import MB, METHODS, available_memory_mb, estimate


def release_checkpoint_file(model) -> None:
    """See ``models.release_checkpoint_file`` (kept here for the planner's measurement)."""
    models.release_checkpoint_file(model)


def measure_here(model: str = "smollm2-135m", method: str = "lora", seq_len: int = 256, batch_size: int = 4,
                 steps: int = 3, gradient_checkpointing: bool = False, device: str = "auto", seed: int = 0) -> dict:
    """Train a few steps in THIS process and return its peak memory rise (see ``measure_peak``).

    Same setup as the course's training: ``train.prepare_model`` for the method, AdamW over the
    trainable parameters, forward with labels, backward, optimizer step, gradients set to None.
    QLoRA on a CPU first releases the checkpoint file (``release_checkpoint_file``).
    """
    import peft  # noqa: F401
    import torch  # noqa: F401  (imports happen before the baseline: they are not training memory)
    import transformers  # noqa: F401

    if method == "qlora":
        import bitsandbytes  # noqa: F401
    report.quiet_libraries()
    torch.manual_seed(seed)
    device = models.pick_device(device)
    models.model_location(model)  # builds the offline default's cache first, if needed
    gc.collect()
    baseline = procmem.rss_now()
    reset = procmem.reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    net, _tokenizer = train.prepare_model(model, method, gradient_checkpointing=gradient_checkpointing,
                                          device=device)
    load_seconds = time.perf_counter() - started
    if method == "qlora" and device == "cpu":
        release_checkpoint_file(net)  # see the docstring: count what training needs, not file cache

    def peak_mb() -> float:
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / MB
        return (procmem.peak_rss()[0] - baseline) / MB

    load_peak = peak_mb()
    losses, step_peaks = _train_steps(net, device, steps, batch_size, seq_len, seed, peak_mb)
    trainable, total = train.trainable_parameters(net)
    return {
        "model": model, "method": method, "seq_len": seq_len, "batch_size": batch_size, "steps": steps,
        "gradient_checkpointing": gradient_checkpointing, "device": device,
        "baseline_mb": round(baseline / MB, 1), "load_peak_mb": round(load_peak, 1),
        "peak_mb": round(peak_mb(), 1), "step_peaks_mb": step_peaks,
        "source": "torch.cuda.max_memory_allocated" if device == "cuda" else procmem.peak_rss()[1] + ("" if reset else " (not reset)"),
        "trainable": trainable, "parameters": total, "losses": losses,
        "load_seconds": round(load_seconds, 1), "seconds": round(time.perf_counter() - started, 1),
    }


def _train_steps(net, device: str, steps: int, batch_size: int, seq_len: int, seed: int, peak_mb):
    """STEPS AdamW steps on random tokens; (losses, the peak in MB after each step)."""
    import torch

    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    try:  # Trainer's default optimizer on torch >= 2.8 is the fused AdamW
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    vocab = net.config.vocab_size
    losses, step_peaks = [], []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)
        loss = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        step_peaks.append(round(peak_mb(), 1))
        del loss
    return losses, step_peaks


def measure_peak(model: str = "smollm2-135m", method: str = "lora", seq_len: int = 256, batch_size: int = 4,
                 steps: int = 3, gradient_checkpointing: bool = False, device: str = "auto",
                 timeout: float = 900, threads: int | None = None) -> dict:
    """Measure the real peak memory of a few training steps, in a fresh Python process.

    On a CPU: how far the process's peak resident memory (Linux VmHWM, else ru_maxrss / peak
    working set) rose above its level just before the model was loaded (libraries already
    imported). On CUDA: torch.cuda.max_memory_allocated. A fresh process per call, because peaks
    never come back down within a process. ``threads`` sets the subprocess's CPU threads
    (OMP_NUM_THREADS); the peak memory does not depend on it.
    """
    command = [sys.executable, "-m", "course_lib.memory", "measure", "--model", str(model), "--method", method,
               "--seq-len", str(seq_len), "--batch-size", str(batch_size), "--steps", str(steps),
               "--device", device] + (["--gradient-checkpointing"] if gradient_checkpointing else [])
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"measuring {model} {method} failed (exit {result.returncode}): {tail}")
    return json.loads(lines[-1])


def compare(model: str = "smollm2-135m", methods=METHODS, seq_len: int = 256, batch_size: int = 4,
            steps: int = 3, gradient_checkpointing: bool = False, device: str = "auto",
            parallel: bool | None = None) -> list[dict]:
    """Planner vs reality: one row per method with the estimate, the measured peak and their ratio.

    On a CPU with memory to spare (all planned peaks together under half the available RAM) the
    measurements run side by side, one CPU thread each: every process has its own peak, so they
    do not disturb each other's figure, and on a 2-core machine this is faster than one after
    another (with several busy processes, multi-threaded PyTorch wastes time waiting for its threads).
    """
    from concurrent.futures import ThreadPoolExecutor

    device = models.pick_device(device)
    methods = list(methods)
    plans = {m: estimate(model, m, seq_len, batch_size, gradient_checkpointing, device=device) for m in methods}
    if parallel is None:
        planned = sum(p.total_mb for p in plans.values())
        parallel = device == "cpu" and len(methods) > 1 and planned < 0.5 * available_memory_mb(device)
    threads = max(1, (os.cpu_count() or 1) // len(methods)) if parallel else None

    def run(method):
        return measure_peak(model, method, seq_len, batch_size, steps, gradient_checkpointing, device,
                            threads=threads)

    with ThreadPoolExecutor(max_workers=len(methods) if parallel else 1) as pool:
        measured = dict(zip(methods, pool.map(run, methods)))
    rows = []
    for method in methods:
        est, got = plans[method], measured[method]
        rows.append({"method": method, "planner_estimate_mb": round(est.total_mb, 1),
                     "measured_peak_mb": got["peak_mb"], "ratio": round(est.total_mb / got["peak_mb"], 3),
                     "seconds": got["seconds"], "parallel": bool(parallel), "estimate": est, "measurement": got})
    return rows
