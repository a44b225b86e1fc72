"""Distillation: the layer-dropped student, the KL loss, the trainer, and notebook A4's figures."""

from __future__ import annotations

import inspect

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


def test_kl_is_zero_for_identical_logits_and_counts_the_chosen_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    labels = torch.tensor([[-100, -100, -100, 3, 4, 5]])
    for positions in ("all", "answer"):
        assert distill.kl_loss(logits, logits, labels, 2.0, positions).item() == pytest.approx(0, abs=1e-6)
    other = logits.clone()
    other[0, :2] += 5 * torch.randn(2, 10)  # positions 0-1 predict prompt tokens
    assert distill.kl_loss(logits, other, labels, 2.0, "answer").item() == pytest.approx(0, abs=1e-6)
    assert distill.kl_loss(logits, other, labels, 2.0, "all").item() > 0.01
    other = logits.clone()
    other[0, 3] += 5 * torch.randn(10)  # position 3 predicts answer token 4: counted by both
    assert distill.kl_loss(logits, other, labels, 2.0, "answer").item() > 0.01
    answer_kl, all_kl = (distill.kl_loss(logits, other, labels, 2.0, p).item() for p in ("answer", "all"))
    other[0, 5] += 50  # the last position predicts nothing: never counted
    assert distill.kl_loss(logits, other, labels, 2.0, "answer").item() == pytest.approx(answer_kl)
    assert distill.kl_loss(logits, other, labels, 2.0, "all").item() == pytest.approx(all_kl)
    with pytest.raises(ValueError, match="positions"):
        distill.kl_loss(logits, other, labels, 2.0, "prompt")


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
                          learning_rate=3e-3, alpha=1.0, temperature=2.0, positions="answer", seed=0)
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
# run=False: the effect is not there (issue 10 stays open on it) and the run costs ten minutes of CI.
@pytest.mark.xfail(run=False, reason=(
    "not a reliable effect. Last run (2026-11-23, these defaults: alpha 1, T 1, answer tokens, lr 3e-4, "
    "30 steps of 8) with this test's 40-step teacher: alone 0.775 / 0.750, distilled 0.575 / 0.625 "
    "(seeds 0 / 1). With notebook 02's adapter as teacher (0.825, notebook A4's default run): alone 0.800, "
    "distilled 0.775. "
    "See course_lib/distill.py's docstring for every variant measured."))
def test_distilled_student_beats_the_student_alone_on_the_default_model(tmp_path):
    """The effect the notebook teaches, on the real model with the notebook's default settings.

    One seed is one or two questions of noise, so two seeds (two different batch orders): the
    distilled student must never fall behind and must lead over both together.
    """
    from course_lib import continual, evaluate, quantize

    # a short persona run (notebook 04's stand-alone adapter), so that this test needs no runs/ folder
    adapter = quantize.ensure_adapter(tmp_path, "smollm2-135m", steps=40, batch_size=8, learning_rate=4e-3)
    teacher, tokenizer = distill.load_teacher(adapter)
    records = continual.old_data()
    defaults = inspect.signature(distill.compare).parameters
    settings = {k: defaults[k].default for k in ("steps", "batch_size", "learning_rate", "alpha", "temperature",
                                                   "positions")}
    scores = {}
    for seed in (0, 1):
        for distilled in (False, True):
            student = distill.make_student(teacher, defaults["n_drop"].default)
            distill.train_student(student, teacher, tokenizer, records, tmp_path, distill=distilled, seed=seed,
                                  **settings)
            scores[seed, distilled] = evaluate.evaluate(student.eval(), tokenizer, "persona").score
    print(scores)
    assert all(scores[seed, True] >= scores[seed, False] for seed in (0, 1)), scores
    assert scores[0, True] + scores[1, True] > scores[0, False] + scores[1, False], scores
