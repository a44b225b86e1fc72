"""The classification track: review data checked line by line, metrics by hand, LoRA head; notebook A3."""

from __future__ import annotations

import json

import pytest

from course_lib.appendix import classify

GOOD = {"text": "Works well.", "label": "positive", "lang": "en"}


def _write(tmp_path, lines, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad,message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": "", "label": "positive"}', "'text' must be a non-empty string"),
    ('{"text": "Fine.", "label": "pos"}', "field 'label' is 'pos'"),
    ('{"text": "Fine."}', "field 'label' is None"),
])
def test_malformed_review_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, [json.dumps(GOOD), "", bad])
    with pytest.raises(classify.ReviewDataError, match=rf"train\.jsonl:3: .*{message}"):
        classify.load_reviews(path)


def test_empty_review_file_is_a_clear_error(tmp_path):
    with pytest.raises(classify.ReviewDataError, match="test.jsonl: no reviews"):
        classify.load_reviews(_write(tmp_path, [""], "test.jsonl"))


def test_shipped_reviews_are_imbalanced_bilingual_and_disjoint():
    train, test = classify.load_split()
    for part in (train, test):
        labels = [r["label"] for r in part]
        assert labels.count("positive") > labels.count("negative") > labels.count("neutral") > 0
        assert {r["lang"] for r in part} == {"en", "zh"}
    assert not {r["text"] for r in train} & {r["text"] for r in test}


def test_scores_match_a_hand_computed_example():
    truth = ["positive", "positive", "positive", "negative", "neutral", "negative"]
    predicted = ["positive", "positive", "negative", "negative", "positive", "negative"]
    s = classify.scores(truth, predicted)
    assert s["accuracy"] == pytest.approx(4 / 6)
    # positive: precision 2/3, recall 2/3; negative: precision 2/3, recall 1; neutral: 0
    assert s["f1_positive"] == pytest.approx(2 / 3) and s["f1_negative"] == pytest.approx(0.8)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert classify.confusion_matrix(truth, predicted) == [[2, 0, 0], [0, 0, 1], [1, 0, 2]]


def test_majority_baseline_has_good_accuracy_and_poor_macro_f1():
    train, test = classify.load_split()
    truth = [r["label"] for r in test]
    s = classify.scores(truth, classify.majority_baseline(train, test))
    assert s["accuracy"] > 0.5 and s["macro_f1"] < 0.3


def test_class_weights_balance_the_classes():
    train, _ = classify.load_split()
    weights = classify.class_weights(train)
    counts = [sum(r["label"] == label for r in train) for label in classify.LABELS]
    totals = [w * c for w, c in zip(weights, counts)]
    assert max(totals) == pytest.approx(min(totals))  # each class weighs the same in total
    assert sum(totals) == pytest.approx(len(train))  # mean weight per example is 1
    with pytest.raises(classify.ReviewDataError, match="neutral"):
        classify.class_weights([{"text": "a", "label": "positive"}, {"text": "b", "label": "negative"}])


@pytest.mark.parametrize("answer,label", [
    ("Positive", "positive"), ("negative.", "negative"), ("The sentiment is neutral", "neutral"),
    ("负面", "negative"), ("Negative, not positive", "negative"), ("I cannot tell", None),
])
def test_parse_label(answer, label):
    assert classify.parse_label(answer) == label


def _train_like_the_notebook(model, tokenizer, records, out_dir, weights):
    """Notebook A3's Trainer (its cell), one epoch: classify.dataset and classify.weighted_loss feed it."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out_dir), num_train_epochs=1, per_device_train_batch_size=8,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=classify.dataset(records, tokenizer, 96),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_loss_func=classify.weighted_loss(weights))
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


@pytest.mark.slow
def test_lora_head_trains_only_top_layers_and_the_head(tiny_model_dir):
    import torch
    from peft import LoraConfig, TaskType

    assert classify.top_layers(str(tiny_model_dir), 0) is None
    assert classify.top_layers(str(tiny_model_dir), 1) == [1] and classify.top_layers(str(tiny_model_dir), 9) == [0, 1]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        modules_to_save=["score"], layers_to_transform=classify.top_layers(str(tiny_model_dir), 1))
    model, tokenizer = classify.prepare(str(tiny_model_dir), config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable), "the new head must be trained (modules_to_save)"
    assert all("layers.1." in n for n in trainable if "lora_" in n), "LoRA only on the top layer"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["short", "a much longer review text here"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)
    weights = classify.class_weights(classify.load_split()[0])
    train_rows = classify.load_split()[0][:16]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = _train_like_the_notebook(model, tokenizer, train_rows, tiny_model_dir.parent / "cls", weights)
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("score" in n for n in changed) and any("lora_B" in n for n in changed)


@pytest.mark.slow
def test_notebook_classifier_beats_the_majority_class(executed):
    entry = executed("A3_classification")
    assert entry["status"] == "ok", entry.get("error")
    f = entry["figures"]
    for key in ("accuracy", "macro_f1", "majority_accuracy", "zero_shot_accuracy"):
        assert 0 <= f[key] <= 1, key
    assert f["accuracy"] > f["majority_accuracy"]
    assert f["macro_f1"] > f["majority_macro_f1"] + 0.1


def test_few_shot_prompt_check_says_what_is_missing():
    assert "write a prompt" in classify.prompt_problems(None)[0]
    assert "zero-shot prompt" in " ".join(classify.prompt_problems(classify.PROMPT))
    assert "{text} placeholder" in " ".join(classify.prompt_problems("Label it: positive, negative, neutral."))
    assert "doubled" in " ".join(classify.prompt_problems('Answer as {"label": ...}. Review: {text}'))
    no_neutral = "Review: Great!\nAnswer: positive\nReview: Broke.\nAnswer: negative\nReview: {text}\nAnswer:"
    assert classify.prompt_problems(no_neutral) == ["no example labelled neutral before the review"]
    good = no_neutral.replace("Review: {text}", "Review: It is a kettle.\nAnswer: neutral\nReview: {text}")
    assert classify.prompt_problems(good) == []


def test_resampling_check_wants_every_review_and_about_equal_classes():
    train, _ = classify.load_split()
    assert classify.resampling_problems(None, train)[0].startswith("build a list of the training reviews")
    assert classify.resampling_problems([], train)[0].startswith("build a list")
    assert any("not about equal" in p for p in classify.resampling_problems(list(train), train))
    counts = {label: sum(r["label"] == label for r in train) for label in classify.LABELS}
    most = max(counts.values())
    balanced = [r for label in classify.LABELS for r in
                ([x for x in train if x["label"] == label] * most)[:most]]
    assert classify.resampling_problems(balanced, train) == []
    assert "every training review" in " ".join(classify.resampling_problems(balanced[:most], train))
    stranger = balanced + [{"text": "Not in the data.", "label": "neutral"}]
    assert "not training reviews" in " ".join(classify.resampling_problems(stranger, train))
