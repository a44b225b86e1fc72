"""bench/run.py end to end on the tiny random model: every figure is produced and is a real ratio.

No timing assertions (the performance contract): only that the figures exist, are finite and
positive, and that what must hold whatever the machine's speed does hold (same validation loss
for the same training, padding-free trains fewer token slots than padding).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("trainer_speedup", "trainer_mfu", "mem_lora_over_full", "mem_qlora_over_lora", "nf4_size_ratio",
        "nf4_ppl_ratio", "int8_ppl_ratio", "int8_weight_only_ppl_ratio", "int8_weight_only_size_ratio",
        "serve_decode_speedup", "course_seconds", "trainer_vs_trl_sft", "trainer_vs_dynamic_padding", "mfu_best_peak",
        "train_tokens_per_s_fp32", "train_tokens_per_s_bf16", "train_tokens_per_s_bf16_weights")


def test_smoke_run_writes_every_figure(tiny_model_dir, tmp_path):
    report = tmp_path / "course_report.json"
    report.write_text(json.dumps({"total_seconds": 12.5, "small_run": True, "notebooks": [
        {"name": "00_environment", "status": "ok", "seconds": 5.0},
        {"name": "01_data", "status": "ok", "seconds": 7.5}]}))
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--model", str(tiny_model_dir), "--threads", "1",
                           "--run-dir", str(tmp_path / "run"), "--course-report", str(report), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(figures[key], (int, float)) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["course_seconds"] == 12.5 and figures["course_notebooks"]["01_data"] == 7.5
    assert figures["course_main_path_seconds"] == 12.5  # 00 and 01 are both on the main path
    # Same model, examples, steps and learning rate: the two trainers must land on nearly the same loss.
    assert figures["val_loss_rel_diff"] < 0.05
    # TRL's SFTTrainer gets the same tokens, loss mask, schedule and seed: the same training.
    assert figures["val_loss_rel_diff_trl"] < 0.02
    assert figures["val_loss_rel_diff_dynamic"] < 0.05  # the same examples in another order (grouped by length)
    assert figures["mfu_best_peak"] <= figures["trainer_mfu"] * 1.0001  # the best peak is at least the fp32 one
    assert figures["precision_choice"] in ("fp32", "bf16", "bf16-weights")
    assert figures["train_tokens"] < figures["padded_tokens"]  # the naive run pads every example to 512
    assert 0 < figures["trainer_mfu"] < 1.5  # a fraction of the measured peak (wide: timers are coarse)
    assert figures["naive_new_tokens"] == figures["decode_new_tokens"]  # both loops decode the same answer
    assert "trainer useful tokens/s" in done.stdout  # the table is printed
    # llama.cpp's server beside the course server: measured, or a sentence saying why not
    if "llama_cpp_skipped" not in figures:
        for key in ("serve_vs_llama_cpp_bs1", "serve_vs_llama_cpp_32_clients"):
            assert figures[key] > 0, key
        assert figures["llama_cpp_answered"] == "4/4"
    assert figures["cpu"] and figures["cpu"] != "x86_64"  # lscpu's model name, beside every timing
