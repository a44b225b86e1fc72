"""The quantize stage's measurements (course_lib/quantize/measure.py): the merge, and sizes on disk
against bytes per parameter.

Most tests use the tiny random-weight Llama (same architecture and tokenizer as the default model);
the size checks use a wider tiny model whose Linear layers are big enough for sizes to be measurable.
The merge's fixtures (qrun, adapter, tokenizer, data, merged) live in conftest.py: the three
test_quantize_*.py files share one merge.
"""

from __future__ import annotations

import json

import pytest

from course_lib import quantize, runtimes, train
from course_lib.quantize.variants import _load_fp32

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
    base = runtimes.TorchRunner(_load_fp32(tiny_model_dir))
    ppl_base = quantize.perplexity_of_runner(base, data.examples[:4])
    assert abs(ppl_base / merged.ppl_merged - 1) > 1e-4


def test_the_merge_cell_calls_give_what_merge_gives(adapter, merged, data, tmp_path):
    """Notebook 04's merge cell: PeftModel.from_pretrained, MergeCheck, merge_and_unload, check.after."""
    from peft import PeftModel

    from course_lib import models, runs

    base, _ = models.load(runs.read_config(adapter)["model"], device="cpu", dtype="float32")
    model = PeftModel.from_pretrained(base, adapter)
    check = quantize.MergeCheck(model, data)
    model = model.merge_and_unload()
    result = check.after(model, tmp_path)
    assert result.ppl_unmerged == pytest.approx(merged.ppl_unmerged, rel=1e-6)
    assert result.ppl_merged == pytest.approx(merged.ppl_merged, rel=1e-6)
    assert abs(result.ppl_ratio - 1) < 1e-3 and result.folder == tmp_path


def test_prompt_tuning_cannot_be_merged(tiny_model_dir, tmp_path):
    folder = tmp_path / "pt"
    folder.mkdir()
    (folder / "course_train.json").write_text(json.dumps({"model": str(tiny_model_dir), "method": "prompt_tuning"}))
    from course_lib.models import load_tokenizer

    load_tokenizer("smollm2-135m").save_pretrained(folder)
    with pytest.raises(ValueError, match="cannot be merged"):
        quantize.merge(folder, tmp_path / "merged")


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
    ("bf16", {}), ("int8_dynamic", {}), ("int8_weight_only", {}), ("bnb_int8", {}), ("nf4", {}), ("nf4", {"double_quant": False}),
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
    if variant in ("int8_dynamic", "int8_weight_only", "bnb_int8", "nf4"):
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
