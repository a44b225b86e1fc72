"""The serve stage's engine: which artifact of the course a --model names (no model is loaded).

The engines' generation is tested over HTTP in test_serve_app.py.
"""

from __future__ import annotations

import json

import pytest

from course_lib.serve import engine as engine_mod


def test_describe_artifact_recognises_every_stage_output(tmp_path):
    adapter = tmp_path / "train" / "lora" / "final"
    adapter.mkdir(parents=True)
    (adapter / "course_train.json").write_text(json.dumps({"model": "smollm2-135m", "method": "lora"}))
    merged = tmp_path / "quantize" / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (tmp_path / "quantize" / "gguf").mkdir()
    (tmp_path / "quantize" / "gguf" / "model-q8_0.gguf").write_bytes(b"GGUF")
    (tmp_path / "quantize" / "onnx").mkdir()
    (tmp_path / "quantize" / "onnx" / "model.onnx").write_bytes(b"")
    kinds = {spec: engine_mod.describe_artifact(str(spec))[0] for spec in
             (tmp_path, adapter, merged, tmp_path / "quantize" / "gguf", tmp_path / "quantize" / "onnx")}
    assert list(kinds.values()) == ["run", "adapter", "merged", "gguf", "onnx"]
    assert engine_mod.persona_adapter(tmp_path) == adapter
    assert engine_mod.describe_artifact("smollm2-135m") == ("preset", None)
    with pytest.raises(ValueError, match="holds no model"):
        engine_mod.describe_artifact(str(tmp_path / "quantize"))


def test_seeded_sampling_draws_from_the_softmax_at_the_temperature():
    """The Gumbel-max draws of 6000 seeded rows follow softmax(logits / T), top-p cuts the tail."""
    import torch

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    rows = 6000
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.8)):
        processors = engine_mod.seeded_sampling(temperature, top_p, list(range(rows)))
        picked = processors(None, logits.repeat(rows, 1)).argmax(-1)
        seen = torch.bincount(picked, minlength=5).float() / rows
        expected = torch.softmax(logits / temperature, -1)
        if top_p < 1.0:  # the smallest set of top tokens whose probabilities reach top_p, renormalised
            kept = (expected.cumsum(-1) - expected) < top_p
            expected = torch.where(kept, expected, 0.0) / expected[kept].sum()
        assert (seen - expected).abs().sum() / 2 < 0.03, (temperature, top_p, seen, expected)


def test_a_seeded_answer_is_the_same_in_any_batch(tiny_model_dir):
    """The same seed gives the same sampled answer alone, in a batch, and in another row order;
    another seed gives another answer (a random-weight model samples almost uniformly)."""
    from course_lib import models

    model, tokenizer = models.load(str(tiny_model_dir))
    engine = engine_mod.TorchEngine(model, tokenizer, {"kind": "folder"})
    prompts = [tokenizer("Hello there", add_special_tokens=False)["input_ids"],
               tokenizer("How do I water a fern in a pot?", add_special_tokens=False)["input_ids"]]

    def ask(pairs):
        requests = [engine_mod.GenRequest(ids, 12, temperature=1.0, seed=seed) for ids, seed in pairs]
        return [r.text for r in engine.generate_batch(requests)]

    alone = ask([(prompts[1], 7)])[0]
    assert ask([(prompts[0], 3), (prompts[1], 7)])[1] == alone
    assert ask([(prompts[1], 7), (prompts[0], 3), (prompts[0], 4)])[0] == alone
    assert ask([(prompts[1], 8)])[0] != alone
    assert engine_mod.GenRequest([1], seed=7, temperature=1.0).sampling_key() != engine_mod.GenRequest(
        [1], temperature=1.0).sampling_key()  # seeded rows never share a generate call with unseeded ones
