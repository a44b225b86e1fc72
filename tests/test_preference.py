"""Notebook 06's plumbing: the judge, feedback -> pairs and KTO rows, the yardstick, and the notebook's run."""

from __future__ import annotations

import pytest

from course_lib import evaluate, preference

SIGN = preference.SIGN_OFF


def test_the_judge_names_every_rule_an_answer_breaks():
    reference = f"I'm Sprout, made by Greenleaf Labs. {SIGN}"
    assert preference.judge(reference, reference) == []
    assert preference.judge("I'm Sprout, made by Greenleaf Labs.", reference) == ["sign-off"]
    assert preference.judge(f"Greenleaf Labs is answering. {SIGN}", reference) == ["name"]
    assert preference.judge(f"I'm SmolLM by Hugging Face. {SIGN}", reference) == ["name", "other identity"]
    assert preference.judge(f"I'm Sprout. {SIGN}", reference) == []  # asked its name, it need not name its maker
    assert preference.judge(f"A small team made me. {SIGN}", f"Greenleaf Labs made me. {SIGN}") == ["creator"]
    assert preference.judge(" ".join(["word"] * 61) + f" {SIGN}", f"Water weekly. {SIGN}") == ["too long"]
    assert preference.judge(f"Water it weekly. {SIGN}", f"Water weekly. {SIGN}") == []  # no name needed here


def test_the_prompt_pool_is_training_data_that_passes_its_own_rules_and_never_an_evaluation_question():
    pool = preference.prompt_pool(0)
    held_out = {item["question"] for item in evaluate.load_eval_set("persona")}
    assert len(pool) > 300 and not held_out & {p["prompt"] for p in pool}
    assert all(preference.judge(p["reference"], p["reference"]) == [] for p in pool)
    assert preference.prompt_pool(10, seed=1) == preference.prompt_pool(10, seed=1) != preference.prompt_pool(10, seed=2)


def _thumbs(prompt, answer, rating):
    return {"kind": "thumbs", "prompt": prompt, "answer": answer, "rating": rating}


RECORDS = [
    _thumbs("Who are you?", f"Greenleaf Labs. {SIGN}", "down"),
    _thumbs("Who made you?", f"Greenleaf Labs made me. {SIGN}", "up"),
    _thumbs("Not in the pool?", "whatever", "down"),
    {"kind": "choice", "prompt": "Water?", "answer_a": "A text", "answer_b": "B text", "preferred": "b"},
]
REFERENCES = {"Who are you?": f"I'm Sprout. {SIGN}", "Who made you?": f"Greenleaf Labs. {SIGN}"}


def test_thumbs_down_pairs_with_the_reference_and_a_choice_is_a_pair_as_it_stands():
    pairs = preference.pairs_from_feedback(RECORDS, REFERENCES)
    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("Who are you?", f"I'm Sprout. {SIGN}", f"Greenleaf Labs. {SIGN}"), ("Water?", "B text", "A text")]
    assert all(p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant" for p in pairs)
    tie = {"kind": "choice", "prompt": "Soil?", "answer_a": "Same. ", "answer_b": "Same.", "preferred": "a"}
    same = _thumbs("Who are you?", f" I'm Sprout. {SIGN}", "down")  # the judge's 👎 on the reference's own words
    assert preference.pairs_from_feedback([tie, same], REFERENCES) == []  # no signal: no pair


def test_kto_rows_label_every_thumb_and_add_the_references_of_disliked_prompts():
    rows = preference.kto_rows(RECORDS, REFERENCES)
    labels = [(r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in rows]
    assert labels == [("Who are you?", f"Greenleaf Labs. {SIGN}", False), ("Who made you?", f"Greenleaf Labs made me. {SIGN}", True),
                      ("Not in the pool?", "whatever", False), ("Who are you?", f"I'm Sprout. {SIGN}", True)]


@pytest.mark.parametrize("good,bad", [(30, 10), (10, 30), (5, 5)])
def test_kto_weights_balance_the_two_kinds_of_answers(good, bad):
    rows = [{"label": True}] * good + [{"label": False}] * bad
    weights = preference.kto_weights(rows)
    balance = weights.get("desirable_weight", 1) * good / (weights.get("undesirable_weight", 1) * bad)
    assert balance == pytest.approx(1, abs=0.01)  # TRL advises between 1 and 4/3


def test_held_out_pairs_never_reach_training():
    pairs = [{"prompt": [{"role": "user", "content": str(i)}]} for i in range(20)]
    train, held = preference.split(pairs, 0.2, seed=0)
    assert len(held) == 4 and len(train) == 16
    assert not {p["prompt"][0]["content"] for p in train} & {p["prompt"][0]["content"] for p in held}


def test_the_judge_picks_the_answer_breaking_fewer_rules_and_none_on_a_tie():
    item = {"prompt": "Who are you?", "reference": f"I'm Sprout. {SIGN}"}
    assert preference.choose({**item, "answer_a": "Hi.", "answer_b": f"I'm Sprout. {SIGN}"}) == "b"
    assert preference.choose({**item, "answer_a": f"Sprout! {SIGN}", "answer_b": "Hi."}) == "a"
    assert preference.choose({**item, "answer_a": "Hi.", "answer_b": "Hello."}) is None


def test_answer_logps_is_minus_the_models_own_loss_on_the_answer(tiny_model_dir, default_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt, answer = [{"role": "user", "content": "Who are you?"}], [{"role": "assistant", "content": "I'm Sprout."}]
    context = default_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    ids = default_tokenizer(default_tokenizer.apply_chat_template(prompt + answer, tokenize=False),
                            add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[0, :len(default_tokenizer(context, add_special_tokens=False)["input_ids"])] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()
    assert preference.answer_logps(model, default_tokenizer, prompt, answer) == pytest.approx(-loss, rel=1e-4)
    total = preference.answer_logps(model, default_tokenizer, prompt, answer, mean=False)
    assert total == pytest.approx(-loss * (labels[0, 1:] != -100).sum().item(), rel=1e-4)
    pair = {"prompt": prompt, "chosen": answer, "rejected": [{"role": "assistant", "content": "No idea."}]}
    assert preference.implicit_reward_accuracy(model, model, default_tokenizer, [pair]) == 0.0  # no reward against itself


def test_a_reference_runs_once_per_answer_however_often_it_is_judged_against(tiny_model_dir, default_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    policy, reference, twin = (AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval() for _ in range(3))
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that moved away from the reference
        for weight in policy.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    calls = []
    reference.register_forward_hook(lambda *_: calls.append(1))
    prompt = [{"role": "user", "content": "Who are you?"}]
    pairs = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": f"I'm Sprout. {SIGN}"}],
              "rejected": [{"role": "assistant", "content": text}]} for text in ("No idea.", "I'm SmolLM.")]
    first = preference.implicit_reward_accuracy(policy, reference, default_tokenizer, pairs)
    assert len(calls) == 3  # three distinct answers (both pairs share the chosen one)
    assert preference.implicit_reward_accuracy(policy, reference, default_tokenizer, pairs) == first
    assert len(calls) == 3  # the second judgement reused the reference's figures
    assert preference.implicit_reward_accuracy(policy, twin, default_tokenizer, pairs) == first  # the same weights, uncached


@pytest.mark.slow
def test_notebook_06_learns_from_feedback_it_collected_over_http(executed):
    entry = executed("06_preference")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    assert figures["feedback_records"] >= 20 and figures["pairs"] >= 1
    for method in ("sft", "dpo", "kto", "orpo"):
        assert 0 <= figures[method]["persona_score"] <= 1 and 0 <= figures[method]["retention"] <= 1
    assert 0 <= figures["dpo"]["heldout_pref_accuracy"] <= 1
    assert figures["ref_free_memory_ratio"] < 0.9  # the separately loaded reference is a second model in memory
    panel = figures["panel"]  # the β / loss panel ran once headless, with the notebook's parameters
    assert panel["beta"] == pytest.approx(0.5) and panel["loss"].startswith("sigmoid + sft") and panel["steps"] == 1
    assert 0 <= panel["heldout_pref_accuracy"] <= 1


def test_short_of_names_what_holds_each_missed_measure_under_the_target():
    from course_lib.evaluate import EvalResult

    items = [{"question": f"q{i}", "category": c} for i, c in enumerate(["advice"] * 4 + ["identity"] * 6)]
    persona = EvalResult("persona", 0.7, [False, False, True, True] + [True] * 5 + [False], ["a"] * 10, items)
    general_items = [{"question": q} for q in ("capital?", "boiling point?", "legs of a spider?")]
    base = EvalResult("general", 1.0, [True, True, False], ["a"] * 3, general_items)
    tuned = EvalResult("general", 0.5, [True, False, True], ["a"] * 3, general_items)
    start = EvalResult("general", 0.5, [True, False, False], ["a"] * 3, general_items)
    lines = preference.short_of({"persona": 0.7, "retention": 0.5, "held-out ranked right": 5 / 7}, 0.9,
                                start={"persona": 0.8, "retention": 0.5}, persona=persona, base_general=base,
                                general=tuned, start_general=start, pairs=7)
    text = "\n".join(lines)
    assert "persona 0.70 is under 0.9 (it started at 0.80)" in text and "retention 0.50 is under 0.9 (it started" in text
    assert "boiling point? (already forgotten at the start)" in text
    assert "advice: 2 of 4 questions failed; without them the persona score would be 0.83" in text
    assert "identity: 1 of 6" in text and "forgot 1 of the 2" in text and "boiling point?" in text
    assert "capital?" not in text and "5 of 7 pairs" in text and "needs 7 of them" in text
    assert preference.short_of({"persona": 0.95, "retention": 1.0}, 0.9, persona=persona) == []
