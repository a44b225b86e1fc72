"""Run the benchmarks and print the table: ``python bench/run.py [--quick] [--json FILE]``.

Each figure is a ratio measured side by side in this one run (absolute times on a shared machine
are noise); bench/README.md says how each one is measured and what the targets are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `course_lib` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import course, quantization, serving, training  # noqa: E402
from course_lib import reference  # noqa: E402

# Sizes per profile: the full run, --quick (<= 10 minutes on the course machine), --smoke (the test).
PROFILES = {
    "full": dict(train=dict(examples=64, val_examples=32, batch_size=8, rounds=2),
                 precision=dict(seq_len=64, batch_size=4, steps=2, new_tokens=16),
                 ladder=dict(seq_len=256, batch_size=4, steps=3),
                 quant=dict(names=("fp32", "int8_dynamic", "int8_weight_only", "nf4", "bnb_int8"), examples=32, latency_tokens=32),
                 decode=dict(new_tokens=64, rounds=3),
                 load=dict(clients=32, questions=64, sequential=8, new_tokens=48)),
    "quick": dict(train=dict(examples=16, val_examples=16, batch_size=8, rounds=1),
                  precision=dict(seq_len=32, batch_size=2, steps=1, new_tokens=8),
                  ladder=dict(seq_len=128, batch_size=2, steps=2),
                  quant=dict(names=("fp32", "int8_dynamic", "int8_weight_only", "nf4"), examples=12, latency_tokens=12),
                  decode=dict(new_tokens=32, rounds=2),
                  load=dict(clients=32, questions=32, sequential=4, new_tokens=24)),
    "smoke": dict(train=dict(examples=4, val_examples=2, batch_size=2, rounds=1),
                  precision=dict(seq_len=8, batch_size=1, steps=1, new_tokens=2),
                  ladder=dict(seq_len=32, batch_size=1, steps=1),
                  quant=dict(names=("fp32", "int8_dynamic", "int8_weight_only", "nf4"), examples=2, latency_tokens=3),
                  decode=dict(new_tokens=4, rounds=1),
                  load=dict(clients=4, questions=4, sequential=2, new_tokens=4)),
}
FIGURES = ("train", "precision", "ladder", "quant", "serve", "course")

# (key, what, target, lower_is_better); a target of None: reported, no target.
TABLE = [
    ("trainer_speedup", "1. trainer useful tokens/s, course / naive Trainer", 2.0, False),
    ("val_loss_rel_diff", "1. |val loss course - naive| / naive", 0.02, True),
    ("trainer_mfu", "2. trainer MFU (6N x tokens/s / matmul peak)", 0.5, False),
    ("trainer_hardware_utilization", "2.   executed FLOPs/s / matmul peak (head skipped on prompts)", None, False),
    ("mfu_best_peak", "2. trainer MFU against the best matmul peak of any precision", 0.3, False),
    ("trainer_vs_trl_sft", "1b. trainer speed, course / TRL SFTTrainer (padding-free)", 1.2, False),
    ("val_loss_rel_diff_trl", "1b. |val loss course - TRL| / TRL", 0.02, True),
    ("trainer_vs_dynamic_padding", "1b. trainer speed, course / Trainer (dynamic padding, by length)", None, False),
    ("val_loss_rel_diff_dynamic", "1b. |val loss course - dynamic| / dynamic", None, True),
    ("precision_choice", "2b. the format precision=\"auto\" picks here", None, False),
    ("train_tokens_per_s_fp32", "2b. LoRA training tokens/s, fp32", None, False),
    ("train_tokens_per_s_bf16", "2b. LoRA training tokens/s, bf16 autocast", None, False),
    ("train_tokens_per_s_bf16_weights", "2b. LoRA training tokens/s, bf16 frozen weights", None, False),
    ("mem_lora_over_full", "3. peak memory LoRA / full", None, True),
    ("speed_lora_over_full", "3.   tokens/s LoRA / full", None, False),
    ("mem_qlora_over_lora", "3. peak memory QLoRA / LoRA", None, True),
    ("speed_qlora_over_lora", "3.   tokens/s QLoRA / LoRA", None, False),
    ("mem_gc_over_no_gc", "3. peak memory checkpointing on / off (LoRA)", None, True),
    ("speed_gc_over_no_gc", "3.   tokens/s checkpointing on / off", None, False),
    ("int8_size_ratio", "4. int8 dynamic size / fp32", None, True),
    ("int8_ppl_ratio", "4. int8 dynamic perplexity / fp32", None, True),
    ("int8_ms_per_token_ratio", "4. int8 dynamic ms/token / fp32", None, True),
    ("int8_keep_down_ppl_ratio", "4. int8 dynamic, down_proj in fp32: perplexity / fp32", None, True),
    ("int8_keep_down_size_ratio", "4.   its size / fp32", None, True),
    ("int8_keep_down_ms_per_token_ratio", "4.   its ms/token / fp32", None, True),
    ("int8_weight_only_size_ratio", "4. int8 weight-only (torchao) size / fp32", None, True),
    ("int8_weight_only_ppl_ratio", "4. int8 weight-only perplexity / fp32", 1.01, True),
    ("int8_weight_only_ms_per_token_ratio", "4. int8 weight-only ms/token / fp32", None, True),
    ("nf4_size_ratio", "4. nf4 size / fp32", None, True),
    ("nf4_ppl_ratio", "4. nf4 perplexity / fp32", None, True),
    ("nf4_ms_per_token_ratio", "4. nf4 ms/token / fp32", None, True),
    ("bnb_int8_size_ratio", "4. bnb int8 size / fp32", None, True),
    ("bnb_int8_ppl_ratio", "4. bnb int8 perplexity / fp32", None, True),
    ("serve_decode_speedup", "5. decode tokens/s batch 1, served / naive loop", None, False),
    ("serve_ttft_ms", "5. time to first token, served (ms)", None, True),
    ("naive_ttft_ms", "5. time to first token, naive (ms)", None, True),
    ("serve_concurrency_speedup", "5. tokens/s 32 clients / one at a time", None, False),
    ("serve_p95_ms", "5. p95 latency under 32 clients (ms)", None, True),
    ("serve_vs_llama_cpp_bs1", "5. chat tokens/s batch 1, course server / llama.cpp server (q8_0)", None, False),
    ("serve_vs_llama_cpp_32_clients", "5.   the same under the load test's clients", None, False),
    ("course_main_path_seconds", "6. main path 00-05 (s)", reference.BUDGET_SECONDS["main path"], True),
    ("course_seconds", "6. make course wall time (s)", reference.BUDGET_SECONDS["everything"], True),
    ("course_slowest_notebook_seconds", "6. slowest notebook (s)", reference.BUDGET_SECONDS["notebook"], True),
]


def measure(model: str, run_dir: Path, threads: int, profile: dict, figures, run_course: bool,
            course_report: Path) -> dict:
    """Every requested figure, in order; one function per figure lives in its own module."""
    import torch

    torch.set_num_threads(threads)
    out: dict = {}
    steps = {
        "train": lambda: training.trainer(model, run_dir, threads, **profile["train"]),
        "precision": lambda: training.precision_speeds(model, **profile["precision"]),
        "ladder": lambda: training.memory_ladder(model, threads, **profile["ladder"]),
        "quant": lambda: quantization.variants(model, run_dir, **profile["quant"]),
        "serve": lambda: {**serving.decode(model, **profile["decode"]),
                          **serving.concurrent(model, threads, **profile["load"]),
                          **serving.against_llama_cpp(model, run_dir, threads, **profile["load"])},
        "course": lambda: course.run_course(run_dir) if run_course else course.from_report(course_report),
    }
    for name in figures:
        started = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        part = steps[name]()
        part[f"{name}_bench_seconds"] = round(time.perf_counter() - started, 1)
        print(f"[bench] {name}: {json.dumps(part, default=str)}", flush=True)  # kept even if a later figure fails
        out.update(part)
    return out


def machine(threads: int) -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    from course_lib.env import cpu_name

    return {"machine": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average": [round(x, 1) for x in load], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(figures: dict) -> str:
    """The figures as a text table, with the target and whether it is met."""
    def show(value):
        if value is None:
            return "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = [f"{'figure':<62} {'value':>9} {'target':>8}  met"]
    for key, what, target, lower in TABLE:
        if key not in figures:
            continue
        value = figures[key]
        met = "" if target is None or value is None else ("yes" if (value <= target if lower else value >= target) else "NO")
        lines.append(f"{what:<62} {show(value):>9} {show(target) if target else '':>8}  {met}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: <= 10 minutes on the course machine")
    parser.add_argument("--smoke", action="store_true", help="the smallest sizes (the test's run)")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--model", default="smollm2-135m", help="preset, hub id or folder")
    parser.add_argument("--run-dir", default="runs", help="where datasets and scratch runs go")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--course", action="store_true", help="run the whole course now (not part of --quick)")
    parser.add_argument("--course-report", default=None, help="default: RUN_DIR/course_report.json")
    args = parser.parse_args(argv)
    import torch

    threads = args.threads or torch.get_num_threads()
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    started = time.perf_counter()
    figures = measure(args.model, run_dir, threads, profile, args.only, args.course,
                      Path(args.course_report or run_dir / "course_report.json"))
    result = {**figures, "model": args.model, "profile": "smoke" if args.smoke else "quick" if args.quick else "full",
              "bench_seconds": round(time.perf_counter() - started, 1), **machine(threads)}
    print(table(result))
    print(f"model {args.model}, {threads} thread(s), load {result['load_average']}, {result['bench_seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=_plain))
    return 0


def _plain(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
