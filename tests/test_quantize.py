"""The quantize stage: merge, every variant, sizes against bytes per parameter, ONNX parity, GGUF in
llama.cpp, pruning, and notebook 04's small run.

Most tests use the tiny random-weight Llama (same architecture and tokenizer as the default model);
the size checks use a wider tiny model whose Linear layers are big enough for sizes to be measurable.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
from pathlib import Path

import pytest

from course_lib import quantize, train

TORCH_VARIANTS = ("fp32", "bf16", "int8_dynamic", "bnb_int8", "nf4", "pruned")


def _save_random_adapter(base_dir: Path, out: Path, method: str = "lora") -> Path:
    """A LoRA adapter with random (non-zero) B, saved like course_lib.train saves one: no training needed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # random B: the merge must matter
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (out / "course_train.json").write_text(json.dumps({"model": str(base_dir), "method": method}))
    return out


@pytest.fixture(scope="module")
def qrun(tmp_path_factory):
    return tmp_path_factory.mktemp("quantize_run")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, qrun):
    return _save_random_adapter(tiny_model_dir, qrun / "train" / "lora" / "final")


@pytest.fixture(scope="module")
def tokenizer(adapter):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(adapter)


@pytest.fixture(scope="module")
def data(tokenizer, qrun):
    return quantize.eval_data(tokenizer, qrun, ppl_examples=4, persona_questions=3, max_new_tokens=6, latency_tokens=4)


@pytest.fixture(scope="module")
def merged(adapter, qrun, data):
    return quantize.merge(adapter, qrun / "quantize" / "merged", data)


@pytest.fixture(scope="module")
def bench(merged, tokenizer, data, qrun):
    bench = quantize.Bench(merged.folder, tokenizer, data, qrun / "quantize", sparsity=0.2, gguf_type="q8_0")
    for variant in quantize.VARIANTS:
        if variant == "gguf" and quantize.converter_available():
            continue
        bench.run(variant)
    return bench


# --------------------------------------------------------------------------- the adapter and the merge


def test_ensure_adapter_reuses_a_matching_adapter(adapter, qrun, tiny_model_dir, capsys):
    assert train.ensure_adapter(qrun, str(tiny_model_dir)) == adapter
    assert "Using the trained adapter" in capsys.readouterr().out


def test_merged_model_equals_adapter_on_the_side(merged, tiny_model_dir, data):
    assert abs(merged.ppl_ratio - 1) < 1e-3, merged
    assert merged.max_abs_logit_diff < 1e-4, merged
    # A standard folder: loads without peft, and holds no LoRA weights.
    from safetensors import safe_open

    with safe_open(str(merged.folder / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    assert (merged.folder / "tokenizer.json").exists() and (merged.folder / "config.json").exists()
    # The adapter changed the model, so "merged == unmerged" is not trivially true.
    base = quantize.TorchRunner(quantize._load_fp32(tiny_model_dir))
    ppl_base = quantize.perplexity(base, data.examples[:4])
    assert abs(ppl_base / merged.ppl_merged - 1) > 1e-4


def test_prompt_tuning_cannot_be_merged(tiny_model_dir, tmp_path):
    folder = tmp_path / "pt"
    folder.mkdir()
    (folder / "course_train.json").write_text(json.dumps({"model": str(tiny_model_dir), "method": "prompt_tuning"}))
    from course_lib.models import load_tokenizer

    load_tokenizer("smollm2-135m").save_pretrained(folder)
    with pytest.raises(ValueError, match="cannot be merged"):
        quantize.merge(folder, tmp_path / "merged")


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


def test_every_runtime_generates_the_asked_number_of_tokens(merged, qrun, data):
    for variant in ("fp32", "nf4", "onnx"):
        built = quantize.build(variant, merged.folder, qrun / "gen_check")
        try:
            assert len(built.runner.greedy(data.latency_prompt, 5, stop_ids=())) == 5
        finally:
            quantize._free(built.runner)


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


def test_a_rerun_with_the_same_settings_is_free(bench):
    before = bench.results["pruned"]
    assert bench.run("pruned") is before
    assert bench.run("pruned", sparsity=0.5) is not before
    assert abs(bench.results["pruned"].extra["measured"] - 0.5) < 1e-4
    bench.run("pruned", sparsity=0.2)


# --------------------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory, default_tokenizer):
    """A random Llama whose Linear layers (~2M parameters) are big enough for per-format sizes to show."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("wide") / "wide-llama"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(default_tokenizer), hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, eos_token_id=default_tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    default_tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("variant, options", [
    ("bf16", {}), ("int8_dynamic", {}), ("bnb_int8", {}), ("nf4", {}), ("nf4", {"double_quant": False}),
    ("pruned", {"sparsity": 0.5}), ("onnx", {}), ("gguf", {"gguf_type": "q8_0"}),
])
def test_sizes_shrink_as_bytes_per_parameter_predict(wide_dir, tmp_path, variant, options):
    if variant == "gguf" and quantize.converter_available():
        pytest.skip(quantize.converter_available())
    split = quantize.parameter_split(wide_dir)
    fp32 = quantize.weight_files_bytes(wide_dir)
    assert abs(fp32 / (4 * split["total"]) - 1) < 0.01
    measured = quantize.measure_size(variant, wide_dir, tmp_path, **options) * 1e6
    predicted = quantize.predict_bytes(variant, split, **{k: v for k, v in options.items() if k != "sparsity"})
    if variant == "gguf":  # the file also carries the tokenizer (49k tokens, 48k merges) and chat template
        contents = quantize.gguf_contents(next((tmp_path / "gguf").glob("*.gguf")))
        assert 0.5 < contents["metadata_mb"] < 4 and contents["chat_template"]
        measured -= contents["metadata_mb"] * 1e6
    if variant in ("int8_dynamic", "bnb_int8", "nf4"):
        # Judge the quantized part alone (the fp32 rest is the same in both): within 4% + 64 KB of metadata.
        quantized_part = predicted - 4 * (split["total"] - split["linear"])
        assert abs(measured - predicted) < 0.04 * quantized_part + 64_000, (variant, options, measured, predicted)
    else:
        assert abs(measured / predicted - 1) < 0.03, (variant, options, measured, predicted)


def test_double_quantization_saves_about_a_third_of_a_bit(wide_dir, tmp_path):
    split = quantize.parameter_split(wide_dir)
    with_dq = quantize.measure_size("nf4", wide_dir, tmp_path / "a") * 1e6
    without = quantize.measure_size("nf4", wide_dir, tmp_path / "b", double_quant=False) * 1e6
    saved_bits = 8 * (without - with_dq) / split["linear"]
    # 0.5 - 0.127 = 0.373 bits per weight, minus a 256-value code book per layer (1 KB: visible on 2M weights)
    assert 0.25 < saved_bits < 0.45, saved_bits


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9])
def test_pruning_zeroes_exactly_the_smallest_weights(tiny_model_dir, sparsity):
    import torch

    model = quantize._load_fp32(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = quantize.prune_magnitude(model, sparsity)
    assert abs(stats["measured"] - sparsity) <= 1 / stats["prunable"]
    pruned = [(n, p) for n, p in model.named_parameters() if ".layers." in n and n.endswith("proj.weight")]
    if sparsity:
        dropped = torch.cat([before[n][p == 0].abs() for n, p in pruned])
        kept = torch.cat([p[p != 0].abs() for _, p in pruned])
        assert dropped.max() <= kept.min()
    # Embedding and norms untouched.
    assert torch.equal(before["model.embed_tokens.weight"], model.model.embed_tokens.weight)


def test_pruning_rejects_a_sparsity_of_one(tiny_model_dir):
    with pytest.raises(ValueError, match="sparsity"):
        quantize.prune_magnitude(quantize._load_fp32(tiny_model_dir), 1.0)


# --------------------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch_logits_and_greedy_tokens(bench, merged, data, qrun):
    result = bench.results["onnx"]
    assert result.max_abs_logit_diff < 1e-4 and result.top1_agreement == 1.0
    assert abs(bench.ratio("onnx", "ppl") - 1) < 1e-5
    # The KV-cache path: token by token, the same greedy continuation as PyTorch.
    onnx = quantize.OnnxRunner(qrun / "quantize" / "onnx" / "model.onnx")
    torch_runner = quantize.TorchRunner(quantize._load_fp32(merged.folder))
    assert onnx.greedy(data.latency_prompt, 12, ()) == torch_runner.greedy(data.latency_prompt, 12, ())


# --------------------------------------------------------------------------- GGUF


def test_fetch_converter_takes_only_the_converter_from_the_sdist(tmp_path):
    sdist_root = tmp_path / "src" / "llama_cpp_python-9.9.9"
    files = {"vendor/llama.cpp/convert_hf_to_gguf.py": "print('convert')",
             "vendor/llama.cpp/conversion/__init__.py": "", "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
             "vendor/llama.cpp/LICENSE": "MIT", "vendor/llama.cpp/src/llama.cpp": "// big C++ tree",
             "llama_cpp/__init__.py": ""}
    for name, text in files.items():
        (sdist_root / name).parent.mkdir(parents=True, exist_ok=True)
        (sdist_root / name).write_text(text)
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(sdist_root, arcname=sdist_root.name)
    dest = quantize.fetch_converter(tmp_path / "converter", sdist=sdist)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["LICENSE", "SOURCE.txt", "conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]


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

    monkeypatch.setattr(quantize, "convert_gguf", copy_instead)
    monkeypatch.setattr(quantize, "llama_cpp_available", lambda: "llama-cpp-python is not installed (test).")
    built = quantize.build("gguf", bench.model_dir, tmp_path)
    assert built.runner is None and built.disk_bytes == converted.stat().st_size
    assert any("not installed" in note for note in built.notes)
    result = quantize.measure(built, tokenizer, data)  # measured as far as possible, never a crash
    assert result.size_mb > 0 and math.isnan(result.ppl) and math.isnan(result.ms_per_token)


def test_gguf_loads_in_llama_cpp_and_generates(merged, data, tokenizer, tmp_path):
    missing = quantize.converter_available() or quantize.llama_cpp_available()
    if missing:
        pytest.skip(missing)
    import numpy as np

    built = quantize.build("gguf", merged.folder, tmp_path, gguf_type="f32")
    try:
        tokens = built.runner.greedy(data.latency_prompt, 6, stop_ids=())
        assert len(tokens) == 6
        # Same weights in f32, other runtime: logits agree to float rounding, not bit for bit.
        reference = quantize.TorchRunner(quantize._load_fp32(merged.folder))
        ids = data.examples[0][0]
        ours, theirs = built.runner.logits(ids), reference.logits(ids)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-2
        assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.95
        assert len(built.runner.answers(tokenizer, data)) == len(data.items)
    finally:
        quantize._free(built.runner)


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
    for variant in ("fp32", "int8_dynamic", "bnb_int8", "nf4", "pruned", "onnx"):
        for key in ("size_mb", "size_ratio", "ppl_ratio", "ms_per_token", "persona_score"):
            assert f"{variant}_{key}" in figures, f"{variant}_{key}"
    assert figures["onnx_max_abs_logit_diff"] < 1e-3
    assert figures["nf4_size_ratio"] < 1 and figures["pruned_size_ratio"] == pytest.approx(1, abs=0.01)
    assert abs(figures["pruned_sparsity_measured"] - figures["sparsity"]) < 1e-3
    if figures.get("gguf_converter"):
        assert figures["gguf_size_ratio"] < 0.5


def test_int8_dynamic_can_keep_chosen_layers_in_fp32(merged, tokenizer, data, tmp_path):
    import torch

    built = quantize.build("int8_dynamic", merged.folder, tmp_path, int8_skip=("down_proj",))
    mlp = built.runner.model.model.layers[0].mlp
    assert type(mlp.down_proj) is torch.nn.Linear  # kept in fp32
    assert "quantized" in type(mlp.up_proj).__module__  # torch.ao.nn.quantized.dynamic Linear
    assert any("down_proj kept fp32" in note for note in built.notes)
    result = quantize.measure(built, tokenizer, data)  # what exercise 3 runs
    assert math.isfinite(result.ppl) and len(result.answers) == len(data.items)
