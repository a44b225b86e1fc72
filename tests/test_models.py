"""The model resolver and the offline default model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from course_lib import models


def test_resolve_tells_preset_hub_and_path_apart(tmp_path):
    assert models.resolve("smollm2-135m").kind == "package"
    assert models.resolve("smollm2-135m").offline is True
    hub = models.resolve("Qwen/Qwen2.5-0.5B-Instruct")
    assert hub.kind == "hub" and hub.preset is models.PRESETS["qwen2.5-0.5b"]
    assert models.resolve(str(tmp_path)).kind == "path"
    assert models.PRESETS["llama-3.2-1b"].gated


def test_unknown_name_is_one_clear_sentence():
    with pytest.raises(models.ModelUnavailableError, match="neither a preset"):
        models.resolve("no-such-model")


def test_unreachable_hub_model_gives_one_sentence_not_a_traceback():
    with pytest.raises(models.ModelUnavailableError) as caught:
        models.load("HuggingFaceTB/this-model-is-not-cached", device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "offline default" in message
    assert caught.value.__suppress_context__  # `from None`: no chained 40-line traceback


def test_gated_preset_says_how_to_log_in():
    with pytest.raises(models.ModelUnavailableError, match="gated"):
        models.load_tokenizer("llama-3.2-1b")


def test_cli_info_reports_the_offline_default():
    result = subprocess.run([sys.executable, "-m", "course_lib.models", "info", "smollm2-135m"],
                            capture_output=True, text=True, check=True, timeout=300)
    info = json.loads(result.stdout)
    assert abs(info["parameters"] - 134.5e6) < 0.1e6
    assert info["offline"] is True
    assert info["vocab_size"] == 49152 and info["architecture"] == "LlamaForCausalLM"
    assert 400 < info["size_mb"] < 600  # float32 safetensors of 134.5M parameters


def test_cli_error_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "course_lib.models", "info", "org/not-cached-model"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")


def test_cache_is_built_once_then_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    first = models.default_model_dir(progress=False)
    assert "dequantizing" in capsys.readouterr().out
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "README.md"} <= {p.name for p in first.iterdir()}
    assert "dequantized 4-bit copy" in (first / "README.md").read_text()
    again = models.default_model_dir()
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert "dequantizing" not in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp*"))  # no half-written staging folder left behind


def test_chat_template_renders_chatml(default_tokenizer):
    text = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert default_tokenizer.eos_token == "<|im_end|>" and default_tokenizer.pad_token is not None


def test_default_model_knows_paris_before_any_training():
    import torch

    model, tokenizer = models.load("smollm2-135m", device="cpu")
    assert model.dtype == torch.float32 and abs(models.count_parameters(model) - 134.5e6) < 0.1e6
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_tiny_model_loads_like_any_folder(tiny_model_dir):
    model, tokenizer = models.load(str(tiny_model_dir), device="cpu")
    assert models.count_parameters(model) < 5e6
    assert len(tokenizer) == model.config.vocab_size
    out = model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1


def test_4bit_load_uses_bitsandbytes_layers(tiny_model_dir):
    import bitsandbytes as bnb

    model, _ = models.load(str(tiny_model_dir), device="cpu", bits=4)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert layers[0].weight.quant_type == "nf4"
