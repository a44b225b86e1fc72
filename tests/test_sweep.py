"""Notebook 02b's pieces: labels on every token, answer and prompt losses apart, the sweep and the ablation."""

from __future__ import annotations

import pytest
import torch

from course_lib import batches, sweep

CHAT = [{"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I'm Sprout, made by Greenleaf Labs. Happy growing!"}]


def test_every_token_labels_keep_the_inputs(default_tokenizer):
    from datasets import Dataset

    tokenized = batches.tokenize(Dataset.from_list([{"messages": CHAT}]), default_tokenizer)
    everything = batches.label_everything(tokenized)[0]
    assert everything["labels"] == everything["input_ids"]
    assert tokenized[0]["labels"] != tokenized[0]["input_ids"]  # the answer-only labels differ


def test_split_losses_agree_with_the_models_own_loss(tiny_model_dir, default_tokenizer):
    """The answer part equals the loss the model computes with answer-only labels; the rest is the prompt."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    losses = sweep.split_losses(model, default_tokenizer, [CHAT])
    example = batches.encode(CHAT, default_tokenizer)
    with torch.no_grad():
        ids = torch.tensor([example["input_ids"]])
        answer_only = model(input_ids=ids, labels=torch.tensor([example["labels"]])).loss.item()
        everything = model(input_ids=ids, labels=ids).loss.item()
    assert losses["answer_loss"] == pytest.approx(answer_only, abs=1e-3)
    n_answer = sum(label != batches.IGNORE for label in example["labels"][1:])
    n_prompt = len(example["labels"]) - 1 - n_answer
    mixed = (losses["answer_loss"] * n_answer + losses["prompt_loss"] * n_prompt) / (n_answer + n_prompt)
    assert mixed == pytest.approx(everything, abs=1e-3)


def test_ablation_refuses_a_reused_run_of_another_rank(tmp_path):
    with pytest.raises(ValueError, match="r = 8"):
        sweep.answer_only_ablation(tmp_path, reuse={"lora_r": 8}, lora_r=16)


@pytest.mark.slow
def test_notebook_02b_matches_peft_and_measures_rank_and_loss_mask(executed):
    entry = executed("02b_inside_lora")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    assert figures["lora_scratch_max_abs_diff"] < 1e-5 < figures["lora_scratch_update_max"]
    rows = figures["rank_sweep"]
    assert [row["lora_r"] for row in rows] == [2, 8, 32]
    # q_proj 576 -> 576 and v_proj 576 -> 192 in each of 30 layers: r * 57,600 trainable numbers.
    assert [row["trainable_params"] for row in rows] == [r * 57_600 for r in (2, 8, 32)]
    assert all(0 <= row["persona_score"] <= 1 and row["val_loss"] > 0 for row in rows)
    answers_only, every_token = figures["answer_only_ablation"]
    assert answers_only["loss counts"] == "answers only" and every_token["loss counts"] == "every token"
    # Even a couple of steps on every token teach the prompts (the system line repeats in each one).
    assert every_token["prompt_loss"] < answers_only["prompt_loss"]
