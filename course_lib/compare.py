"""Methods side by side: each training method run on the same data and steps in a fresh process,
the results as tables beside claims common in fine-tuning tutorials, and the interactive panel's quick experiment.

A fresh process per run (``python -m course_lib.train``) because a process's peak memory only ever
grows: measured in one process, every method after the hungriest would inherit its peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from course_lib import evaluate, memory, models, paths, runs, train, ui

# Each method at a learning rate suited to it, for comparisons at the same data and steps: full
# fine-tuning moves every weight, so it needs a rate ~100x below LoRA's (at LoRA's 4e-3 it diverged
# here, validation loss 15.6); prompt tuning trains only a few virtual-token embeddings and needs a
# higher one. LoRA and QLoRA use the notebook's LEARNING_RATE.
METHOD_LEARNING_RATES = {"full": 5e-5, "prompt_tuning": 3e-2}


def compare_methods(methods=("full", "lora", "qlora", "prompt_tuning"), run_dir=None,
                    learning_rates: dict | None = None, **settings) -> list[dict]:
    """Train each method on the same data for the same steps, each in a fresh Python process.

    A fresh process per method because peak memory (the process's peak RSS on CPU) only ever
    grows: measured in one process, every method after the hungriest would inherit its peak.
    On a CPU with two or more cores the runs go two at a time, each with half the cores
    (``OMP_NUM_THREADS``): peak memory is per process, and every run gets the same share of the
    machine, so their tokens/s still compare (each is about half what the whole CPU gives).
    A failure or an interrupt stops the runs still going.
    ``learning_rates`` overrides METHOD_LEARNING_RATES; others use ``settings["learning_rate"]``.
    """
    from tqdm.auto import tqdm

    run_dir = paths.run_dir(run_dir)
    rates = {**METHOD_LEARNING_RATES, **(learning_rates or {})}
    together = 2 if models.pick_device() == "cpu" and (os.cpu_count() or 1) >= 2 else 1
    env = {**os.environ, "OMP_NUM_THREADS": str((os.cpu_count() or 2) // together)} if together > 1 else None
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=len(methods), desc="methods", unit="run") as bar:
        for first in range(0, len(methods), together):
            running = {}
            try:
                for method in methods[first:first + together]:
                    args = {"save_every": "no", **settings, "method": method,
                            "output_dir": str(run_dir / "compare" / method)}
                    if method in rates:
                        args["learning_rate"] = rates[method]
                    running[method] = (*_start_run(args, run_dir, Path(tmp), env), args.get("learning_rate"))
                for method, (process, summary, log, rate) in running.items():
                    if process.wait() != 0:
                        last = (log.read_text().strip().splitlines() or ["no message"])[-1]
                        raise RuntimeError(f"{method} failed: {last}")
                    rows[method] = json.loads(summary.read_text()) | {"learning_rate": rate}
                    bar.update()
            finally:  # after a failure or an interrupt, no run is left going
                for process, *_ in running.values():
                    if process.poll() is None:
                        process.kill()
                        process.wait()
    return [rows[method] for method in methods]


def _start_run(args: dict, run_dir: Path, tmp: Path, env: dict | None):
    """Start ``python -m course_lib.train`` with ARGS; returns (process, its summary file, its log file).

    Its output goes to a file, not a pipe: a full pipe would stall it while the run beside it is awaited.
    """
    summary, log = tmp / f"{args['method']}.json", tmp / f"{args['method']}.log"
    command = [sys.executable, "-m", "course_lib.train", *[f"--{k.replace('_', '-')}={v}" for k, v in args.items()],
               "--run-dir", str(run_dir), "--json", str(summary), "--fresh"]
    with log.open("w") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env), summary, log


def comparison_table(rows: list[dict]):
    """Method, trainable parameters (and %), peak memory, tokens/s, validation loss (a DataFrame)."""
    import pandas as pd

    table = pd.DataFrame([{
        "method": r["method"], "trainable params": f"{r['trainable_params']:,}",
        "trainable %": round(100 * r["trainable_params"] / r["total_params"], 3),
        **({"learning rate": r["learning_rate"]} if r.get("learning_rate") else {}),
        "peak memory MB": r["peak_memory_mb"], "tokens/s": r["tokens_per_s"],
        "val loss": r["val_loss"], **({"persona score": r["persona_score"]} if "persona_score" in r else {}),
    } for r in rows])
    return table.set_index("method")


def plot_history(result: train.TrainResult, title: str = ""):
    """Training loss per step, validation loss per epoch, and the learning-rate schedule."""
    import matplotlib.pyplot as plt

    history = result.log_history
    steps = [h["step"] for h in history if "loss" in h]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax_loss.plot(steps, [h["loss"] for h in history if "loss" in h], label="training loss")
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if evals:
        ax_loss.plot(*zip(*evals), "o-", label="validation loss")
    ax_loss.set(xlabel="step", ylabel="loss", title=title or f"{result.config['method']} training")
    ax_loss.legend()
    ax_lr.plot(steps, [h.get("learning_rate", float("nan")) for h in history if "loss" in h], color="tab:green")
    ax_lr.set(xlabel="step", ylabel="learning rate", title=f"{result.config['scheduler']} schedule with warmup")
    fig.tight_layout()
    return fig


def claims_table(rows: list[dict]):
    """Claims common in fine-tuning tutorials beside what this machine measured in COMPARE_METHODS' rows."""
    import pandas as pd

    by = {r["method"]: r for r in rows}
    claims = []

    def claim(text, measured, holds, note):
        claims.append({"claim": text, "measured": measured, "verdict": "confirmed" if holds else "not here",
                       "note": note})

    if {"full", "lora"} <= by.keys():
        fewer = 1 - by["lora"]["trainable_params"] / by["full"]["trainable_params"]
        claim("LoRA: 99% fewer trainable parameters", round(fewer, 4), fewer >= 0.99,
              f"{by['lora']['trainable_params']:,} vs {by['full']['trainable_params']:,}")
        saved = 1 - by["lora"]["peak_memory_mb"] / by["full"]["peak_memory_mb"]
        claim("LoRA saves 70% memory", round(saved, 3), saved >= 0.6,
              "peak memory vs full fine-tuning; on small models activations and the output layer weigh more")
    if {"lora", "qlora"} <= by.keys():
        saved = 1 - by["qlora"]["peak_memory_mb"] / by["lora"]["peak_memory_mb"]
        claim("QLoRA needs less memory than LoRA", round(saved, 3), saved > 0, "4-bit frozen weights")
        speed = by["qlora"]["tokens_per_s"] / by["lora"]["tokens_per_s"]
        claim("QLoRA saves memory, not time", round(speed, 3), speed <= 1.1,
              "QLoRA tokens/s over LoRA tokens/s: dequantizing on the fly costs compute")
    plan = memory.estimate("qwen2.5-7b", "qlora", seq_len=512, batch_size=1, gradient_checkpointing=True,
                           device="cuda")
    claim("QLoRA lets a 7B model fit in 24 GB", round(plan.total_mb / 1024, 1), plan.total_mb <= 24 * 1024,
          "GB, notebook 00's planner for Qwen2.5-7B (seq 512, batch 1, checkpointing): an estimate, "
          "not a GPU measurement")
    return pd.DataFrame(claims)


def quick_experiment(model: str, run_dir, before, limit: int = 6, *, learning_rate: float, lora_r: int,
                     lora_alpha: int, lora_dropout: float, epochs: int, batch_size: int, method: str,
                     steps: int) -> dict:
    """The interactive panel's run: a few steps, the loss figure, and before/after answers."""
    from IPython.display import display

    result = train.train(run_dir=run_dir, model=model, method=method, learning_rate=learning_rate, lora_r=lora_r,
                         lora_alpha=lora_alpha, lora_dropout=lora_dropout, epochs=epochs, batch_size=batch_size,
                         max_examples=batch_size * steps, max_val_examples=16,  # 16 validation examples: a quick estimate
                         output_dir=str(Path(run_dir) / "train" / "widget"),
                         replay_share=0.0, logging_steps=1, save_every="epoch", quiet=True)
    display(plot_history(result, title=f"{method}, lr {learning_rate:g}, r {lora_r}, alpha {lora_alpha}"))
    with ui.quiet_progress():
        tuned, tokenizer = runs.load(result.adapter_dir)
    after = evaluate.evaluate(tuned, tokenizer, "persona", limit=limit)
    print(f"{method}, r {lora_r}, lr {learning_rate:.1e}: {result.trainable_params:,} trainable parameters")
    print(f"persona score on {limit} questions: {before.score:.2f} before -> {after.score:.2f} after "
          f"({result.steps} steps, {result.train_seconds:.0f} s)")
    display(evaluate.side_by_side(before, after, limit))
    return {"steps": result.steps, "persona_score": after.score, "val_loss": result.val_loss}
