"""Methods side by side (course_lib.compare): fresh-process runs and the tables made from their rows."""

from __future__ import annotations

import pytest

from course_lib import compare

ROWS = [{"method": "full", "trainable_params": 1000, "total_params": 1000, "peak_memory_mb": 900.0,
         "tokens_per_s": 100.0, "val_loss": 2.0, "learning_rate": 5e-5},
        {"method": "lora", "trainable_params": 5, "total_params": 1005, "peak_memory_mb": 300.0,
         "tokens_per_s": 120.0, "val_loss": 2.1, "learning_rate": None, "persona_score": 0.5},
        {"method": "qlora", "trainable_params": 5, "total_params": 1005, "peak_memory_mb": 250.0,
         "tokens_per_s": 60.0, "val_loss": 2.2, "learning_rate": None}]


def test_tables_from_comparison_rows():
    table = compare.comparison_table(ROWS)
    assert list(table.index) == ["full", "lora", "qlora"] and table.loc["lora", "trainable %"] == 0.498
    claims = {c["claim"]: c for c in compare.claims_table(ROWS).to_dict("records")}
    assert claims["LoRA: 99% fewer trainable parameters"]["verdict"] == "confirmed"
    assert claims["LoRA saves 70% memory"]["measured"] == pytest.approx(0.667, abs=1e-3)
    assert claims["QLoRA saves memory, not time"]["verdict"] == "confirmed"
    assert claims["QLoRA lets a 7B model fit in 24 GB"]["verdict"] == "confirmed"  # the planner's estimate


@pytest.mark.slow
def test_peak_memory_is_not_inherited_from_a_big_parent(tiny_model_dir, tmp_path):
    """A comparison run started from a big kernel must report its own peak, not the kernel's."""
    import numpy as np

    ballast = np.ones(1_000_000_000, dtype=np.uint8)  # 1 GB resident in this (parent) process
    rows = compare.compare_methods(("lora",), run_dir=tmp_path, model=str(tiny_model_dir), max_steps=1,
                                   batch_size=2, max_examples=4, max_val_examples=2)
    assert int(ballast[-1]) == 1
    assert 0 < rows[0]["peak_memory_mb"] < 800
