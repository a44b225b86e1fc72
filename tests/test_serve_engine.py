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
