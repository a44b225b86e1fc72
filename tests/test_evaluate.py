"""The scores of course_lib.evaluate that need no model: ROUGE-L, BLEU, perplexity from a loss."""

from __future__ import annotations

import math

import pytest

from course_lib import evaluate


def test_rouge_l_by_hand():
    # candidate: i am sprout (3 words); reference: i am sprout , made by greenleaf (7 tokens); LCS = 3,
    # so precision 3/3, recall 3/7, F1 = 2PR / (P + R)
    f1 = 2 * 1 * (3 / 7) / (1 + 3 / 7)
    assert evaluate.rouge_l("I am Sprout", "I am Sprout, made by Greenleaf") == pytest.approx(f1)
    assert evaluate.rouge_l("happy growing", "growing happy") == pytest.approx(0.5)  # order matters: LCS 1
    assert evaluate.rouge_l("the same words", "the same words") == 1.0
    assert evaluate.rouge_l("nothing", "in common") == 0.0


def test_bleu_by_hand():
    assert evaluate.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # "the cat sat on a mat" vs "the cat sat on the mat": 1-4 gram precisions 5/6, 3/5, 2/4, 1/3;
    # same length, so no brevity penalty.
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert evaluate.bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(expected)
    # Shorter than the reference: precisions are all 1 but the brevity penalty exp(1 - 6/4) applies.
    assert evaluate.bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(1 - 6 / 4))
    # No 4-gram match: 0 without smoothing, small but positive with it (first missing order counts 1/2).
    cands, refs = ["a b c x"], ["a b c d"]
    assert evaluate.bleu(cands, refs, smooth=False) == 0.0
    smoothed = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(0.5 / 1)) / 4)
    assert evaluate.bleu(cands, refs) == pytest.approx(smoothed)
    assert evaluate.bleu([""], ["anything"]) == 0.0
    assert evaluate.bleu(["nothing shared"], ["other words"]) == 0.0  # no unigram match: no smoothing either


def test_perplexity_from_loss():
    assert evaluate.perplexity_from_loss(0.0) == 1.0
    assert evaluate.perplexity_from_loss(math.log(9.4)) == pytest.approx(9.4)
    assert math.isnan(evaluate.perplexity_from_loss(float("nan")))


def test_evaluate_sets_gives_each_set_its_own_answers(monkeypatch):
    """The sets' questions go out in one list; each set must get back its own answers, in order."""
    asked = []

    def echo(model, tokenizer, prompts, max_new_tokens, batch_size):
        asked.append((len(prompts), batch_size))
        return [f"answer to {p}" for p in prompts]

    monkeypatch.setattr(evaluate, "generate", echo)
    results = evaluate.evaluate_sets(None, None, ("persona", "general"), limit=3, batch_size=80)
    assert asked == [(6, 80)]  # one call: the two sets share batches
    for name in ("persona", "general"):
        questions = [i["question"] for i in evaluate.load_eval_set(name)[:3]]
        assert results[name].answers == [f"answer to {q}" for q in questions] and results[name].name == name
    every = evaluate.evaluate_sets(None, None, ("persona",))["persona"]
    assert len(every.answers) == len(evaluate.load_eval_set("persona"))  # limit 0: every question


def test_remembered_answers_once_per_key_and_never_for_other_weights(monkeypatch, tmp_path):
    """A model's answers are generated once and reused; new weights (another fingerprint) are asked afresh."""
    from course_lib import runs

    calls = []

    def echo(model, tokenizer, prompts, max_new_tokens, batch_size):
        calls.append(len(prompts))
        return [f"{model} says {p}" for p in prompts]

    monkeypatch.setattr(evaluate, "generate", echo)
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights one")
    first_key = runs.fingerprint(adapter)
    first = evaluate.remembered("one", None, first_key, ("persona", "general"), tmp_path, limit=2)
    again = evaluate.remembered("one", None, first_key, "persona", tmp_path, limit=2)
    assert calls == [4] and again.answers == first["persona"].answers  # the second call generated nothing
    (adapter / "adapter_model.safetensors").write_bytes(b"weights two")  # retrained: other weights
    second_key = runs.fingerprint(adapter)
    fresh = evaluate.remembered("two", None, second_key, "persona", tmp_path, limit=2)
    assert second_key != first_key and calls == [4, 2] and fresh.answers[0].startswith("two says")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        runs.fingerprint(tmp_path / "eval")


def test_greedy_in_rounds_gives_the_answers_of_one_generate_call(tiny_model_dir):
    """Rows that end leave the batch between rounds; every row's tokens are those of one plain call."""
    import torch

    from course_lib import models

    model, tokenizer = models.load(str(tiny_model_dir))
    tokenizer.padding_side = "left"
    prompts = ["Hello", "How do I water a fern in a pot on a sunny sill?", "Name a tree", "Why?"]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    plain = dict(do_sample=False, max_new_tokens=10, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        first = model.generate(**inputs, **plain)[:, inputs["input_ids"].shape[1]:]
        # end rows early: the second token of row 0 and the fifth of row 2 become end-of-answer tokens
        model.generation_config.eos_token_id = [int(first[0, 1]), int(first[2, 4])]
        expected = model.generate(**inputs, **plain, eos_token_id=model.generation_config.eos_token_id)
        got = evaluate.greedy_in_rounds(model, tokenizer, inputs, 10, round_tokens=3)
    width = inputs["input_ids"].shape[1]
    stops = set(model.generation_config.eos_token_id)
    for row, tokens in enumerate(got):
        want = expected[row, width:].tolist()
        ended = next((i for i, t in enumerate(want) if t in stops), None)
        if ended is None:
            assert tokens == want, row
        else:  # the same tokens up to and including the end; what a batch pads after it does not matter
            assert tokens[:ended + 1] == want[:ended + 1] and len(tokens) < 10, row
    assert any(t in stops for t in got[0][:2]) and len(got[0]) == 3  # row 0 left after the first round
