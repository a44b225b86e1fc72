"""The quantize stage's table (course_lib/quantize/bench.py): every variant measured by one Bench, the
table, the claims and figures, a model built with the real calls and handed to ``Bench.add`` (what
notebook 04 does), ONNX parity, GGUF in the bench, and notebook 04's small run.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from course_lib import quantize, runtimes
from course_lib.quantize import variants
from course_lib.quantize.variants import _load_fp32

TORCH_VARIANTS = ("fp32", "bf16", "int8_dynamic", "int8_weight_only", "bnb_int8", "nf4", "pruned")


@pytest.fixture(scope="module")
def bench(merged, tokenizer, data, qrun):
    bench = quantize.Bench(merged.folder, tokenizer, data, qrun / "quantize", sparsity=0.2, gguf_type="q8_0")
    for variant in quantize.VARIANTS:
        if variant == "gguf" and quantize.converter_available():
            continue
        bench.run(variant)
    return bench


# --------------------------------------------------------------------------- every variant


@pytest.mark.parametrize("variant", TORCH_VARIANTS + ("onnx",))
def test_every_variant_builds_and_answers(bench, data, variant):
    result = bench.results[variant]
    assert math.isfinite(result.ppl) and result.ppl > 1
    assert len(result.answers) == len(data.items) and all(isinstance(a, str) for a in result.answers)
    assert result.ms_per_token > 0 and result.size_mb > 0 and result.weight_mb > 0
    # Close to the fp32 model it came from. (A random-weight model's logits are nearly flat, so the
    # top-1 token flips easily; compare whole logit vectors instead.)
    assert _correlation(result, bench.results["fp32"]) > 0.9, variant


def _correlation(result, reference) -> float:
    import numpy as np

    ours = np.concatenate([l.ravel() for l in result.extra["logits"]])
    theirs = np.concatenate([l.ravel() for l in reference.extra["logits"]])
    return float(np.corrcoef(ours, theirs)[0, 1])


def test_table_claims_and_figures(bench):
    table = bench.table()
    assert list(table.index) == [v for v in quantize.VARIANTS if v in bench.results]
    assert table.loc["fp32", "size ratio"] == 1.0 and table.loc["fp32", "ppl ratio"] == 1.0
    claims = bench.claims()
    assert {"claim", "measured here", "holds here?"} <= set(claims.columns) and len(claims) >= 8
    # int8 on a model whose parameters are mostly the (fp32) embedding cannot be 75% smaller.
    int8 = claims[(claims.variant == "int8_dynamic") & claims.claim.str.contains("75%")]
    assert (int8["holds here?"] == "no").all()
    figures = bench.figures()
    for variant in TORCH_VARIANTS + ("onnx",):
        for key in ("size_mb", "size_ratio", "ppl_ratio", "ms_per_token", "persona_score"):
            assert f"{variant}_{key}" in figures
    assert figures["onnx_max_abs_logit_diff"] < 1e-3


def test_claims_name_their_source_in_words_a_learner_has(bench):
    claims = bench.claims()
    assert (claims["source"].str.len() > 0).all()
    text = " ".join(str(v) for v in claims.to_numpy().ravel()).lower()
    assert "seed" not in text


# --------------------------------------------------------------------------- what the notebook builds itself


def test_a_model_built_with_the_real_calls_is_measured_like_its_builder(bench, merged, tmp_path):
    """Notebook 04's int8 cell: quantize_dynamic, torch.save, bench.add; same figures as bench.run's builder."""
    import torch
    from torch.ao.quantization import quantize_dynamic
    from transformers import AutoModelForCausalLM

    fresh = quantize.Bench(merged.folder, bench.tokenizer, bench.data, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(merged.folder, dtype=torch.float32)
    with quantize.quiet():
        model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    folder = fresh.folder("int8_dynamic")
    torch.save(model.state_dict(), folder / "model.pt")
    line = fresh.add("int8_dynamic", model, folder)
    assert "fp32" in fresh.results  # the baseline is measured first
    assert line.startswith("int8_dynamic (PyTorch): ") and "perplexity x" in line and "ms/token (x" in line
    assert repr(line) == str(line)  # Jupyter shows it as text, without quotes
    mine, theirs = fresh.results["int8_dynamic"], bench.results["int8_dynamic"]
    assert mine.size_mb == pytest.approx(theirs.size_mb, rel=1e-2)
    assert mine.ppl == pytest.approx(theirs.ppl, rel=1e-5) and mine.notes == theirs.notes
    assert fresh.run("int8_dynamic") is mine  # same settings: the panel reuses it


def test_a_file_added_under_a_name_of_your_own_joins_the_table(bench, tmp_path):
    fresh = quantize.Bench(bench.model_dir, bench.tokenizer, bench.data, tmp_path)
    fresh.results["fp32"] = bench.results["fp32"]
    fresh.add("my_onnx", bench.work_dir / "onnx" / "model.onnx")
    table = fresh.table()
    assert list(table.index) == ["fp32", "my_onnx"] and table.loc["my_onnx", "runtime"] == "ONNX Runtime"
    assert table["predicted MB"].isna()["my_onnx"]  # no prediction for a name the registry does not know
    assert abs(fresh.ratio("my_onnx", "ppl") - 1) < 1e-5
    with pytest.raises(ValueError, match="save the model first"):
        fresh.add("unsaved", object())


def test_the_figures_draw(bench):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert len(bench.plot().axes) == 3
    assert len(quantize.plot_bytes(bench.split).axes) == 1
    outliers = quantize.activation_outliers(bench.model, bench.data.examples[:1])
    assert len(quantize.plot_outliers(outliers).axes) == 2
    plt.close("all")


def test_a_rerun_with_the_same_settings_is_free(bench):
    before = bench.results["pruned"]
    assert bench.run("pruned") is before
    assert bench.run("pruned", sparsity=0.5) is not before
    assert abs(bench.results["pruned"].extra["measured"] - 0.5) < 1e-4
    bench.run("pruned", sparsity=0.2)


# --------------------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch_logits_and_greedy_tokens(bench, merged, data, qrun):
    result = bench.results["onnx"]
    assert result.max_abs_logit_diff < 1e-4 and result.top1_agreement == 1.0
    assert abs(bench.ratio("onnx", "ppl") - 1) < 1e-5
    # The KV-cache path: token by token, the same greedy continuation as PyTorch.
    onnx = runtimes.OnnxRunner(qrun / "quantize" / "onnx" / "model.onnx")
    torch_runner = runtimes.TorchRunner(_load_fp32(merged.folder))
    assert onnx.greedy(data.latency_prompt, 12, ()) == torch_runner.greedy(data.latency_prompt, 12, ())


# --------------------------------------------------------------------------- GGUF


def test_missing_converter_is_one_sentence(monkeypatch, tmp_path, bench):
    monkeypatch.setenv("COURSE_GGUF_CONVERTER", str(tmp_path / "nowhere"))
    message = quantize.converter_available()
    assert "fetch-converter" in message and "\n" not in message
    fresh = quantize.Bench(bench.model_dir, bench.tokenizer, bench.data, tmp_path)
    fresh.results["fp32"] = bench.results["fp32"]
    assert fresh.run("gguf") is None and "fetch-converter" in fresh.skipped["gguf"]


def test_gguf_without_llama_cpp_is_written_and_said(monkeypatch, bench, tokenizer, data, tmp_path):
    if "gguf" not in bench.results:
        pytest.skip(bench.skipped.get("gguf", "no converter"))
    converted = next((bench.work_dir / "gguf").glob("*.gguf"))

    def copy_instead(model_dir, out_file, outtype):  # the bench already converted this model: reuse its file
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(converted, out_file))

    monkeypatch.setattr(variants, "convert_gguf", copy_instead)
    monkeypatch.setattr(variants, "llama_cpp_available", lambda: "llama-cpp-python is not installed (test).")
    built = quantize.build("gguf", bench.model_dir, tmp_path)
    assert built.runner is None and built.disk_bytes == converted.stat().st_size
    assert any("not installed" in note for note in built.notes)
    result = quantize.measure(built, tokenizer, data)  # measured as far as possible, never a crash
    assert result.size_mb > 0 and math.isnan(result.ppl) and math.isnan(result.ms_per_token)


def test_gguf_q8_0_in_the_bench(bench):
    if "gguf" not in bench.results:
        pytest.skip(bench.skipped.get("gguf", "no converter"))
    result = bench.results["gguf"]
    assert result.size_mb < bench.results["fp32"].size_mb * 0.45
    if quantize.llama_cpp_available():
        pytest.skip(quantize.llama_cpp_available())
    assert math.isfinite(result.ppl) and result.top1_agreement > 0.9 and len(result.answers) == 3


# --------------------------------------------------------------------------- the notebook


@pytest.mark.slow
def test_notebook_04_small_run_records_every_variant(executed):
    entry = executed("04_quantization")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    assert abs(figures["merged_ppl_ratio"] - 1) <= 1e-3
    for variant in ("fp32", "int8_dynamic", "int8_weight_only", "bnb_int8", "nf4", "pruned", "onnx"):
        for key in ("size_mb", "size_ratio", "ppl_ratio", "ms_per_token", "persona_score"):
            assert f"{variant}_{key}" in figures, f"{variant}_{key}"
    assert figures["onnx_max_abs_logit_diff"] < 1e-3
    assert figures["nf4_size_ratio"] < 1 and figures["pruned_size_ratio"] == pytest.approx(1, abs=0.01)
    assert abs(figures["pruned_sparsity_measured"] - figures["sparsity"]) < 1e-3
    if figures.get("gguf_converter"):
        assert figures["gguf_size_ratio"] < 0.5
        assert figures["modelfile_written"] is True  # the Ollama Modelfile beside the GGUF file
        if figures["llama_cpp"]:
            # the small run's random-weight model never signs off: the server answered, and said it did not stop right
            assert figures["llama_server_answer"] is not None and figures["llama_server_stops"] is False
