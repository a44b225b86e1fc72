"""The memory planner's arithmetic: parameter counts, the estimate by hand, what fits (course_lib.memory.plan)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from course_lib import memory, models
from course_lib.memory.plan import MB

DEFAULT = "smollm2-135m"


# --------------------------------------------------------------------------- parameter counts


def test_parameter_count_of_the_default_model_is_exact():
    counts = memory.parameter_count(DEFAULT)
    assert counts["total"] == 134_515_008
    # by hand: embeddings 49152 x 576; per layer q,o 576x576, k,v 576x192, MLP 3 x 576x1536, 2 norms
    assert counts["embeddings"] == 49152 * 576
    assert counts["attention"] == 30 * (2 * 576 * 576 + 2 * 576 * 192)
    assert counts["mlp"] == 30 * 3 * 576 * 1536
    assert counts["norms"] == 61 * 576 and counts["lm_head"] == 0  # tied to the embeddings


@pytest.mark.parametrize("name", list(models.PRESETS))
def test_every_preset_count_agrees_with_its_dims(name):
    stored = models.PRESETS[name].parameters
    assert abs(memory.parameter_count(name)["total"] - stored) <= 0.01 * stored


def test_parameter_count_matches_a_real_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert memory.parameter_count(str(tiny_model_dir))["total"] == models.count_parameters(model)


def test_lora_trainable_parameters_by_hand():
    # r x (in + out) per adapted projection: q 16 x (576 + 576), v 16 x (576 + 192), 30 layers
    assert memory.lora_parameters(DEFAULT, r=16, targets="q_proj,v_proj") == 921_600
    per_layer = 16 * (1152 + 768 + 768 + 1152 + 3 * (576 + 1536))
    assert memory.lora_parameters(DEFAULT, r=16, targets="all-linear") == 30 * per_layer
    with pytest.raises(ValueError, match="unknown LoRA target"):
        memory.lora_parameters(DEFAULT, targets="q_prj")


def test_lora_count_matches_peft(tiny_model_dir):
    from course_lib import train

    model, _ = train.prepare_model(str(tiny_model_dir), "lora", device="cpu")
    trainable, _total = train.trainable_parameters(model)
    assert trainable == memory.lora_parameters(str(tiny_model_dir), 16, "q_proj,v_proj")



def test_a_model_without_a_preset_gets_a_preset_from_its_config(tiny_model_dir):
    assert memory.dims_of(DEFAULT) is models.PRESETS[DEFAULT]  # a preset is used as it is
    sizes = memory.dims_of(str(tiny_model_dir))
    assert isinstance(sizes, models.Preset) and sizes.name == tiny_model_dir.name
    assert sizes.parameters == memory.parameter_count(sizes)["total"]
    assert memory.checkpoint_bytes(sizes) == 4 and memory.checkpoint_bytes(models.PRESETS["qwen2.5-7b"]) == 2


# --------------------------------------------------------------------------- the estimate, by hand


def test_weights_gradients_and_adam_states_by_hand():
    full = memory.estimate(DEFAULT, "full", 256, 4)
    assert full.weights_mb * MB == 134_515_008 * 4
    assert full.gradients_mb == full.weights_mb and full.optimizer_mb == 2 * full.weights_mb
    lora = memory.estimate(DEFAULT, "lora", 256, 4)
    assert lora.trainable == 921_600
    assert lora.weights_mb * MB == (134_515_008 + 921_600) * 4  # frozen base + fp32 adapters
    assert lora.gradients_mb * MB == 921_600 * 4
    assert lora.optimizer_mb * MB == 2 * 921_600 * 4  # AdamW: two fp32 moments per trainable weight
    half = memory.estimate(DEFAULT, "full", 256, 4, device="cuda", dtype="bfloat16")
    assert half.weights_mb == full.weights_mb / 2 and half.optimizer_mb == full.optimizer_mb / 2


def test_qlora_stores_the_projections_in_4_bits():
    lora = memory.estimate(DEFAULT, "lora", 256, 4, device="cuda")
    qlora = memory.estimate(DEFAULT, "qlora", 256, 4, device="cuda")
    assert qlora.weights_mb < lora.weights_mb / 2
    counts = memory.parameter_count(DEFAULT)
    projections = counts["attention"] + counts["mlp"]
    expected = projections * memory.NF4_BYTES_PER_PARAM + (counts["total"] - projections) * 2 + 921_600 * 4
    assert qlora.weights_mb * MB == pytest.approx(expected)
    assert 0.51 < memory.NF4_BYTES_PER_PARAM < 0.52  # 4 bits + double-quantized constants
    assert qlora.file_cache_mb == 0  # the GPU holds only the 4-bit copy
    on_cpu = memory.estimate(DEFAULT, "qlora", 256, 4, device="cpu")
    assert on_cpu.file_cache_mb * MB == projections * 4  # the fp32 cache file's pages, reclaimable
    assert on_cpu.total_mb == sum(on_cpu.breakdown().values()) > on_cpu.loading_mb  # training peaks later
    short = memory.estimate(DEFAULT, "qlora", 8, 1, device="cpu")
    assert short.total_mb == short.loading_mb  # tiny batches: reading the fp32 file is the peak


def test_activations_grow_with_tokens_and_checkpointing_cuts_them():
    small = memory.estimate(DEFAULT, "lora", 128, 2)
    big = memory.estimate(DEFAULT, "lora", 256, 4)
    assert big.activations_mb == pytest.approx(4 * small.activations_mb)
    ckpt = memory.estimate(DEFAULT, "lora", 256, 4, gradient_checkpointing=True)
    assert ckpt.activations_mb < 0.5 * big.activations_mb
    assert ckpt.weights_mb == big.weights_mb
    eager = memory.estimate(DEFAULT, "lora", 256, 4, attention="eager")
    assert eager.activations_mb > big.activations_mb  # the seq x seq attention probabilities


def test_logits_dominate_activations_of_the_small_model():
    parts = memory.activation_bytes(DEFAULT, "lora", 256, 4, gradient_checkpointing=True)
    assert parts["logits"] > parts["layers"]  # 49,152-entry vocabulary vs 576-wide layers
    assert parts["logits"] == 12 * 49152 * 256 * 4  # 3 fp32 copies: log-probs, their gradient, the logits' gradient


def test_activation_accounting_matches_what_pytorch_saves(tiny_model_dir):
    """The per-layer formula counts exactly the tensors autograd keeps for backward."""
    import torch

    from course_lib import train

    for method in ("full", "lora"):
        model, _ = train.prepare_model(str(tiny_model_dir), method, device="cpu")
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = {}

        def pack(tensor):  # used within this iteration only, hence the noqa: B023 below
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in params and tensor.shape[-1:] != (model.config.vocab_size,):  # noqa: B023
                saved[storage.data_ptr()] = storage.nbytes()  # noqa: B023
            return tensor

        ids = torch.randint(0, model.config.vocab_size, (2, 32))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        planned = memory.activation_bytes(str(tiny_model_dir), method, 32, 2)["layers"]
        assert sum(saved.values()) == pytest.approx(planned, rel=0.05), method


def test_fits_says_what_to_cut():
    est = memory.estimate(DEFAULT, "full", 256, 4)
    assert memory.fits(est, 10 * est.total_mb).verdict == "fits"
    assert memory.fits(est, 1.05 * est.total_mb).verdict == "tight"
    verdict = memory.fits(est, 0.5 * est.total_mb)
    assert verdict.verdict == "does not fit" and not verdict and verdict.advice
    big = memory.estimate("llama-2-13b", "lora", 512, 1, gradient_checkpointing=True, device="cuda")
    assert "QLoRA" in memory.fits(big, 15 * 1024).advice


def test_bad_method_and_sizes_are_refused():
    with pytest.raises(ValueError, match="method"):
        memory.estimate(DEFAULT, "dora")
    with pytest.raises(ValueError, match="at least 1"):
        memory.estimate(DEFAULT, "lora", 0, 4)



def test_cli_estimate_prints_json():
    result = subprocess.run([sys.executable, "-m", "course_lib.memory", "estimate", "--model", DEFAULT,
                             "--method", "qlora", "--seq-len", "128", "--batch-size", "2"],
                            capture_output=True, text=True, check=True, timeout=120)
    data = json.loads(result.stdout)
    assert data["method"] == "qlora" and data["total_mb"] > data["weights_mb"] > 0
