"""precision="auto" on a CPU: measured once per machine, remembered, overridable; every branch is
tested here with injected measurements, so it holds whatever CPU runs the tests."""

from __future__ import annotations

import json
import math

import pytest
import torch

from course_lib import models, precision, precision_speed, train


def figures(train_tps: float, loss: float = 2.0, generate: float = 10.0) -> dict:
    return {"train_tokens_per_s": train_tps, "loss": loss, "generate_tokens_per_s": generate, "probe_speedup": 1.0}


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A private course cache and no pinned precision: what a learner's fresh machine has."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(precision.ENV, raising=False)
    return tmp_path


def test_choose_keeps_fp32_unless_another_format_is_clearly_faster_and_agrees():
    base = figures(100)
    assert precision.choose({"fp32": base, "bf16": figures(105)}) == "fp32"  # within timing noise
    assert precision.choose({"fp32": base, "bf16": figures(150)}) == "bf16"
    assert precision.choose({"fp32": base, "bf16": figures(150), "bf16-weights": figures(300)}) == "bf16-weights"
    # Faster but wrong: a loss 5% off fp32's is not accepted at the default 2% tolerance.
    assert precision.choose({"fp32": base, "bf16": figures(300, loss=2.1)}) == "fp32"
    assert precision.choose({"fp32": base, "bf16": figures(300, loss=2.1)}, tolerance=0.1) == "bf16"
    # A format ruled out by its probe has no training figures and is never chosen.
    assert precision.choose({"fp32": base, "bf16": {"probe_speedup": 0.04, "skipped": True}}) == "fp32"
    assert precision.choose({}) == "fp32"


def test_formats_that_train_equally_fast_are_told_apart_by_generation():
    base = figures(100)
    tie = {"fp32": base, "bf16": figures(140, generate=9.0), "bf16-weights": figures(135, generate=16.0)}
    assert precision.choose(tie) == "bf16-weights"  # 140 / 135 is within timing noise: generation decides
    clear = {"fp32": base, "bf16": figures(200, generate=9.0), "bf16-weights": figures(135, generate=16.0)}
    assert precision.choose(clear) == "bf16"  # clearly faster training wins, whatever it generates


def test_pinned_format_wins_and_a_wrong_one_names_the_variable(own_cache, monkeypatch):
    precision.remember({"fp32": figures(100), "bf16": figures(200)}, "bf16")
    assert precision.cpu_choice() == "bf16"
    monkeypatch.setenv(precision.ENV, "fp32")
    assert precision.cpu_choice() == "fp32"
    monkeypatch.setenv(precision.ENV, "fp8")
    with pytest.raises(ValueError, match=f"{precision.ENV}='fp8'.*fp32, bf16, bf16-weights"):
        precision.cpu_choice()


def test_first_use_measures_once_and_later_uses_remember(own_cache, monkeypatch):
    calls = []

    def fake_measure(*args, **kwargs):
        calls.append(1)
        return {"fp32": figures(100), "bf16": figures(90), "bf16-weights": figures(180)}

    monkeypatch.setattr(precision_speed, "measure", fake_measure)
    assert precision.cpu_choice() is None and models.pick_dtype("cpu") == torch.float32  # loading never measures
    assert calls == []
    assert train.precision_flags("auto", "cpu") == {"bf16": True, "fp16": False, "use_cpu": True}  # training measures, once
    assert train.precision_flags("auto", "cpu") == {"bf16": True, "fp16": False, "use_cpu": True}
    assert calls == [1]
    assert precision.cpu_choice() == "bf16-weights" and models.pick_dtype("cpu") == torch.bfloat16
    saved = json.loads((own_cache / "precision.json").read_text())[precision.machine_key()]
    assert saved["choice"] == "bf16-weights" and saved["measured"]["bf16-weights"]["train_tokens_per_s"] == 180


def test_a_broken_cache_file_means_measure_again(own_cache, monkeypatch):
    (own_cache / "precision.json").write_text("{not json")
    assert precision.cpu_choice() is None
    monkeypatch.setattr(precision_speed, "measure", lambda *a, **k: {"fp32": figures(100)})
    assert precision_speed.measure_and_remember() == "fp32"
    assert precision.remembered()["choice"] == "fp32"


@pytest.mark.parametrize("choice, flags, dtype", [
    ("fp32", {"bf16": False, "fp16": False, "use_cpu": True}, torch.float32),
    ("bf16", {"bf16": True, "fp16": False, "use_cpu": True}, torch.float32),
    ("bf16-weights", {"bf16": True, "fp16": False, "use_cpu": True}, torch.bfloat16),
])
def test_the_choice_serves_training_flags_and_loading(own_cache, choice, flags, dtype, tmp_path):
    from transformers import TrainingArguments

    precision.remember({"fp32": figures(100)}, choice)
    assert train.precision_flags("auto", "cpu") == flags
    # transformers accepts them on a machine without a GPU (bf16 needs use_cpu there)
    assert TrainingArguments(output_dir=str(tmp_path), report_to=[], **flags).bf16 == flags["bf16"]
    assert models.pick_dtype("cpu") == dtype
    assert train.precision_flags("fp32", "cpu") == {"bf16": False, "fp16": False, "use_cpu": True}  # explicit wins
    assert models.pick_dtype("mps") == torch.float32


def test_bf16_weights_keep_the_adapter_in_fp32_and_full_fine_tuning_in_fp32(own_cache, tiny_model_dir):
    precision.remember({"fp32": figures(100)}, "bf16-weights")
    model, _ = train.prepare_model(str(tiny_model_dir), "lora", device="cpu")
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    full, _ = train.prepare_model(str(tiny_model_dir), "full", device="cpu")
    assert {p.dtype for p in full.parameters()} == {torch.float32}  # AdamW needs fp32 master weights
    explicit, _ = train.prepare_model(str(tiny_model_dir), "lora", device="cpu", weights_dtype="float32")
    assert {p.dtype for p in explicit.parameters()} == {torch.float32}


def test_measure_times_only_formats_whose_probe_is_not_slower(monkeypatch):
    probes = {"fp32": 1.0, "bf16": 4.0, "bf16-weights": 0.5}  # seconds: bf16 4x slower, bf16 weights 2x faster
    monkeypatch.setattr(precision_speed, "probe", lambda fmt, **kw: probes[fmt])
    timed = []
    monkeypatch.setattr(precision_speed, "measure_side_by_side",
                        lambda formats, *a, **k: timed.extend(formats) or {f: figures(100) for f in formats})
    got = precision_speed.measure("any")
    assert timed == ["fp32", "bf16-weights"]
    assert got["bf16"] == {"probe_speedup": 0.25, "skipped": True}
    assert got["bf16-weights"]["probe_speedup"] == 2.0
    assert "bf16 0.25x (one layer only" in precision.describe(got, "fp32")
    rows = precision.table(got, "bf16-weights").rows
    assert [r["chosen"] for r in rows] == ["", "", "yes"] and rows[1]["training vs fp32"] == "not timed"
    timed.clear()
    precision_speed.measure("any", always=True)
    assert timed == list(precision.FORMATS)


def test_probe_and_one_real_measurement_on_the_tiny_model(tiny_model_dir):
    assert precision_speed.probe("fp32", hidden=64, inner=128, tokens=32, repeats=1) > 0
    both = precision_speed.measure_side_by_side(["fp32", "bf16-weights"], str(tiny_model_dir), seq_len=32,
                                                batch_size=2, steps=1, new_tokens=2, rounds=1)
    assert list(both) == ["fp32", "bf16-weights"]
    for got in both.values():
        assert got["train_tokens_per_s"] > 0 and got["generate_tokens_per_s"] > 0
        assert math.isfinite(got["loss"]) and got["loss"] > 0
    # the same start and batch in both formats: only the arithmetic differs
    assert abs(both["bf16-weights"]["loss"] / both["fp32"]["loss"] - 1) < 0.05


def test_a_chip_with_other_bf16_units_is_measured_again(own_cache, monkeypatch):
    """Same model name, other bf16 units (a VM moved to another host): the old choice must not apply."""
    from course_lib import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "avx512f"})
    precision.remember({"fp32": figures(100)}, "fp32")
    assert precision.cpu_choice() == "fp32"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert "avx512_bf16" in precision.machine_key()
    assert precision.cpu_choice() is None
