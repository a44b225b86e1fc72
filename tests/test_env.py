"""The env stage: the environment report, checked on this machine and on faked ones; notebook 00."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from course_lib import env, memory, models

# --------------------------------------------------------------------------- the environment report


def test_report_on_this_machine_tells_the_truth():
    checks = env.environment_report()
    by_item = {c.item: c for c in checks}
    cuda = by_item["torch.cuda.is_available()"]
    assert cuda.value == "False" and cuda.verdict == "ok"  # no GPU here: expected, not a problem
    assert "CPU" in cuda.advice and "course runs on" in cuda.advice
    assert by_item["Course device"].value == "cpu"
    assert by_item["bitsandbytes (QLoRA)"].verdict == "ok"  # a real 4-bit layer ran
    assert ("avx512_bf16" in by_item["bf16"].value) == ("avx512_bf16" in env.cpu_flags())  # read, not assumed
    assert env.counts(checks)["problem"] == 0
    for lib in ("torch", "transformers", "peft", "bitsandbytes", "ipywidgets"):
        assert by_item[lib].verdict == "ok"


def test_report_renders_as_html_and_text():
    checks = [env.Check("a", "1"), env.Check("b", "2", "warning", "fix it"), env.Check("c", "3", "problem", "x")]
    table = env.render(checks)
    assert "1 ok, 1 warning(s), 1 problem(s)" in str(table)
    assert "#cf222e" in table._repr_html_() and "<table>" in table._repr_html_()
    with pytest.raises(ValueError):
        env.Check("d", "4", "bad")


def test_cuda_build_without_a_gpu_does_not_crash(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    checks = {c.item: c for c in env.environment_report(libraries=False)}
    cuda = checks["torch.cuda.is_available()"]
    assert cuda.verdict == "warning" and "nvidia-smi" in cuda.advice  # driver / build mismatch hint
    assert checks["Course device"].value == "cpu"


def test_fake_mps_machine_does_not_crash(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert models.pick_device() == "mps"
    checks = {c.item: c for c in env.environment_report(libraries=False)}
    assert checks["Course device"].value == "mps" and checks["Apple MPS"].value == "available"
    assert "MPS" in checks["torch.cuda.is_available()"].advice
    assert checks["bitsandbytes (QLoRA)"].verdict in ("ok", "warning")  # no MPS here: reported, not raised
    assert env.facts()["mps_available"] is True


def test_fake_t4_machine_does_not_crash(monkeypatch):
    import torch

    props = SimpleNamespace(name="Tesla T4", total_memory=15 * 1024**3, major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: props.name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    checks = {c.item: c for c in env.environment_report(libraries=False)}
    assert checks["GPU 0"].value.startswith("Tesla T4, 15.0 GB")
    assert "fp16" in checks["bf16"].advice
    assert checks["bitsandbytes (QLoRA)"].verdict in ("ok", "warning")  # no real GPU: a warning, no crash
    assert env.facts()["gpus"][0]["name"] == "Tesla T4"


def test_env_cli_runs():
    result = subprocess.run([sys.executable, "-m", "course_lib.env"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-500:]
    assert "torch.cuda.is_available()" in result.stdout


def test_matmul_speed_measures_both_precisions():
    speeds = env.matmul_speed(size=256, repeats=2)
    assert set(speeds) == {"float32", "bfloat16"} and all(v > 0 for v in speeds.values())


# --------------------------------------------------------------------------- the notebook


def _within(estimate_mb: float, measured_mb: float, margin: float) -> bool:
    return abs(estimate_mb / measured_mb - 1) <= margin


@pytest.mark.slow
def test_notebook_00_records_plan_vs_measurement(executed):
    entry = executed("00_environment")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    assert figures["cuda_available"] is False and figures["cpu_cores"] >= 1 and figures["ram_gb"] > 1
    assert figures["verdicts"]["problem"] == 0
    for method in memory.METHODS:
        estimate, measured = figures[f"{method}_planner_estimate_mb"], figures[f"{method}_measured_peak_mb"]
        assert measured > 0
        # the small run (seq 128 x batch 2, 2 steps) keeps the default model's 25% margin
        assert _within(estimate, measured, 0.25), (method, estimate, measured)
        assert figures["memory"][method]["ratio"] == pytest.approx(estimate / measured, rel=0.01)


def test_the_low_memory_hint_points_at_the_planner_and_types_no_figure():
    from course_lib import env

    assert "planner" in env.LOW_MEMORY_HINT and not re.search(r"\d\s*GB", env.LOW_MEMORY_HINT)
