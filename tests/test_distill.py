"""Distillation: the layer-dropped student, the KL loss, the trainer, and notebook A4's figures."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import distill


def test_layers_to_drop_takes_every_other_middle_layer():
    assert distill.layers_to_drop(30, 8) == [10, 12, 14, 16, 18, 20, 22, 24]
    assert distill.layers_to_drop(2, 1) == [1]
    with pytest.raises(ValueError, match="can drop 1 to"):
        distill.layers_to_drop(30, 20)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_student_is_a_smaller_copy_that_generates(teacher):
    model, tokenizer = teacher
    student = distill.make_student(model, n_drop=1)
    assert student.config.num_hidden_layers == 1 and model.config.num_hidden_layers == 2  # teacher untouched
    assert distill.parameters(student) < distill.parameters(model)
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert not any(p.requires_grad for n, p in student.named_parameters() if "embed_tokens" in n)
    ids = tokenizer("Who are you?", return_tensors="pt")
    out = student.generate(**ids, max_new_tokens=4, do_sample=False, use_cache=True)  # KV cache indices renumbered
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_kl_is_zero_for_identical_logits_and_counts_only_answer_tokens():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    labels = torch.tensor([[-100, -100, -100, 3, 4, 5]])
    assert distill.kl_loss(logits, logits, labels, 2.0).item() == pytest.approx(0, abs=1e-6)
    other = logits.clone()
    other[0, :2] += 5 * torch.randn(2, 10)  # positions 0-1 predict prompt tokens: ignored
    assert distill.kl_loss(logits, other, labels, 2.0).item() == pytest.approx(0, abs=1e-6)
    other[0, 3] += 5 * torch.randn(10)  # position 3 predicts answer token 4: counted
    assert distill.kl_loss(logits, other, labels, 2.0).item() > 0.01


@pytest.mark.slow
def test_distill_trainer_pulls_the_student_towards_the_teacher(teacher, tmp_path):
    """With alpha=1 the loss is the KL alone: a few steps must bring the student's logits closer."""
    from course_lib import continual

    model, tokenizer = teacher
    records = continual.old_data()[:8]
    student = distill.make_student(model, n_drop=1)
    loss_to_teacher = _kl_to(model, student, tokenizer, records)
    before = loss_to_teacher()
    distill.train_student(student, model, tokenizer, records, tmp_path, distill=True, steps=6, batch_size=8,
                          learning_rate=3e-3, alpha=1.0, temperature=2.0, seed=0)
    assert loss_to_teacher() < before * 0.8


def _kl_to(teacher, student, tokenizer, records):
    from datasets import Dataset

    from course_lib import batches

    tokenized = batches.tokenize(Dataset.from_list(records), tokenizer)
    batch = batches.collator(trained_logits_only=False)([tokenized[i] for i in range(len(tokenized))])

    def measure():
        with torch.no_grad():
            return distill.kl_loss(student(**batch).logits, teacher(**batch).logits, batch["labels"], 2.0).item()

    return measure


@pytest.mark.slow
def test_notebook_A4_records_every_model(executed):
    entry = executed("A4_distillation")
    assert entry["status"] == "ok", entry.get("error")
    models = entry["figures"]["models"]
    assert set(models) == {"teacher", "student_untrained", "student_alone", "student_distilled"}
    for name, f in models.items():
        assert 0 <= f["persona_score"] <= 1 and f["ms_per_token"] > 0
        assert entry["figures"][f"{name}_parameters"] == f["parameters"]
    assert models["student_alone"]["parameters"] == models["student_distilled"]["parameters"] < \
        models["teacher"]["parameters"]


@pytest.mark.slow
# run=False: the effect is not there yet (issue 10 stays open on it) and the run costs minutes of CI.
@pytest.mark.xfail(run=False, reason=(
    "not yet a stable effect: measured with notebook 02's adapter (8 of 30 layers dropped, 30 steps of 8, "
    "lr 1e-4, alpha 0.5, T 2) distilled 0.600 vs alone 0.575 persona score (one question of 40); with 12 steps "
    "0.475 vs 0.500. Both students recover most of the teacher's 0.675 from the persona data alone; see the "
    "issue-10b report."))
def test_distilled_student_beats_the_student_alone_on_the_default_model(tmp_path):
    """The effect the notebook teaches, on the real model with the notebook's default settings."""
    from course_lib import quantize

    # notebook 02's persona run (40 steps of 8 examples at 4e-3), the adapter `make course` starts from
    adapter = quantize.ensure_adapter(tmp_path, "smollm2-135m", steps=40, batch_size=8, learning_rate=4e-3)
    figures = distill.figures(distill.compare(adapter, tmp_path))
    assert figures["student_distilled"]["persona_score"] >= figures["student_alone"]["persona_score"] + 0.1
    assert figures["student_distilled"]["parameters"] < 0.85 * figures["teacher"]["parameters"]
    assert math.isfinite(figures["student_distilled"]["ms_per_token"])
