"""The quantize stage's variants (course_lib/quantize/variants.py): building each one, pruning, the
int8 layers kept in fp32, llama.cpp's converter and its command, GGUF in llama.cpp, and ``wrap``
(what notebook 04 built, made measurable).
"""

from __future__ import annotations

import math
import tarfile

import numpy as np
import pytest

from course_lib import quantize, runtimes
from course_lib.quantize.measure import _free, weight_bytes
from course_lib.quantize.variants import _load_fp32

# --------------------------------------------------------------------------- every variant


def test_every_runtime_generates_the_asked_number_of_tokens(merged, qrun, data):
    for variant in ("fp32", "nf4", "onnx"):
        built = quantize.build(variant, merged.folder, qrun / "gen_check")
        try:
            assert len(built.runner.greedy(data.latency_prompt, 5, stop_ids=())) == 5
        finally:
            _free(built.runner)


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9])
def test_pruning_zeroes_exactly_the_smallest_weights(tiny_model_dir, sparsity):
    import torch

    model = _load_fp32(tiny_model_dir)
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
        quantize.prune_magnitude(_load_fp32(tiny_model_dir), 1.0)


# --------------------------------------------------------------------------- GGUF


def test_gguf_command_is_the_converter_script_with_its_options(tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("COURSE_GGUF_CONVERTER", str(tmp_path / "converter"))
    command = quantize.gguf_command("merged", tmp_path / "model.gguf", "f16")
    assert command == [sys.executable, str(tmp_path / "converter" / "convert_hf_to_gguf.py"), "merged",
                       "--outfile", str(tmp_path / "model.gguf"), "--outtype", "f16"]
    with pytest.raises(ValueError, match="GGUF type"):
        quantize.gguf_command("merged", tmp_path / "model.gguf", "q4_k_m")


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
        reference = runtimes.TorchRunner(_load_fp32(merged.folder))
        ids = data.examples[0][0]
        ours, theirs = built.runner.logits(ids), reference.logits(ids)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-2
        assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.95
        assert len(built.runner.answers(tokenizer, data)) == len(data.items)
    finally:
        _free(built.runner)


# --------------------------------------------------------------------------- int8 with chosen layers kept in fp32


def test_int8_dynamic_can_keep_chosen_layers_in_fp32(merged, tokenizer, data, tmp_path):
    import torch

    built = quantize.build("int8_dynamic", merged.folder, tmp_path, int8_skip=("down_proj",))
    mlp = built.runner.model.model.layers[0].mlp
    assert type(mlp.down_proj) is torch.nn.Linear  # kept in fp32
    assert "quantized" in type(mlp.up_proj).__module__  # torch.ao.nn.quantized.dynamic Linear
    assert any("down_proj kept fp32" in note for note in built.notes)
    result = quantize.measure(built, tokenizer, data)  # what exercise 3 runs
    assert math.isfinite(result.ppl) and len(result.answers) == len(data.items)


# --------------------------------------------------------------------------- weight-only int8 (torchao)


def test_int8_weight_only_stores_int8_rows_and_keeps_the_answers_close(merged, tokenizer, data, tmp_path):
    """One scale per output row, activations untouched: logits stay close to fp32's, the file shrinks."""
    import torch

    fp32 = quantize.build("fp32", merged.folder, tmp_path)
    built = quantize.build("int8_weight_only", merged.folder, tmp_path)
    try:
        q_proj = built.runner.model.model.layers[0].self_attn.q_proj.weight
        assert q_proj.qdata.dtype == torch.int8 and q_proj.scale.numel() == q_proj.shape[0]
        assert built.runner.model.model.embed_tokens.weight.dtype == torch.float32  # not a Linear
        layer = built.runner.model.model.layers[0]
        fp32_layer = fp32.runner.model.model.layers[0]
        assert weight_bytes(layer) < 0.3 * weight_bytes(fp32_layer)  # int8 rows and a scale each: about a quarter
        ids = list(data.latency_prompt)
        close = np.allclose(built.runner.logits(ids), fp32.runner.logits(ids), atol=0.05, rtol=0.05)
        assert close, "weight-only int8 moved the logits more than rounding the weights should"
        result = quantize.measure(built, tokenizer, data)
        assert math.isfinite(result.ppl) and len(result.answers) == len(data.items)
    finally:
        _free(built.runner, fp32.runner)


# --------------------------------------------------------------------------- wrap: what the notebook made, measurable


def test_wrap_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="build it first"):
        quantize.wrap("onnx", tmp_path / "missing.onnx")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=".onnx or .gguf"):
        quantize.wrap("mine", tmp_path / "model.bin")
    with pytest.raises(ValueError, match="save the model first"):
        quantize.wrap("bf16", object())


def test_wrap_measures_sparsity_and_sizes_from_the_model_and_its_files(tiny_model_dir, tmp_path):
    model = _load_fp32(tiny_model_dir)
    stats = quantize.prune_magnitude(model, 0.3)
    model.save_pretrained(tmp_path)
    built = quantize.wrap("pruned", model, tmp_path)
    assert built.extra["measured"] == pytest.approx(stats["measured"]) and built.extra["prunable"] == stats["prunable"]
    assert built.disk_bytes == quantize.weight_files_bytes(tmp_path) and built.memory_bytes == quantize.weight_bytes(model)
    assert any("zero, stored densely" in note for note in built.notes)
