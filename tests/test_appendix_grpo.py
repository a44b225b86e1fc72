"""Appendix A6 (GRPO): the notebook's reward functions, the group arithmetic, and what the small run records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from course_lib.appendix import grpo

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "A6_grpo.ipynb"


@pytest.fixture(scope="module")
def rules():
    """The reward functions exactly as the notebook writes them: its cell tagged `rewards`, run here."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if "rewards" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, "A6 needs exactly one cell tagged `rewards`"
    namespace = {"MAX_WORDS": 12}
    exec("".join(cells[0]["source"]), namespace)
    return namespace


def chat(*answers):
    """Completions the way GRPOTrainer passes them for chat prompts: a list of messages each."""
    return [[{"role": "assistant", "content": a}] for a in answers]


def test_signs_off_wants_the_sign_off_last(rules):
    assert rules["signs_off"](chat("Water weekly. Happy growing!", "Happy growing! Water weekly.",
                                   "Water weekly. Happy growing!  \n", "Water weekly.")) == [1.0, 0.0, 1.0, 0.0]


def test_brief_counts_words_up_to_max_words(rules):
    twelve, thirteen = " ".join(["word"] * 12), " ".join(["word"] * 13)
    assert rules["brief"](chat(twelve, thirteen, "")) == [1.0, 0.0, 1.0]


def test_says_something_is_the_floor_under_brief(rules):
    assert rules["says_something"](chat("Happy growing!", "Water it. Happy growing!",
                                        "Water it well, weekly. Happy growing!")) == [0.0, 0.0, 1.0]


def test_the_rules_take_the_keyword_arguments_trl_passes(rules):
    extra = {"prompts": [[{"role": "user", "content": "q"}]], "completion_ids": [[1, 2]], "trainer_state": None}
    for fn in rules["RULES"]:
        assert len(fn(chat("Water it well, weekly. Happy growing!"), **extra)) == 1


def test_totals_and_rule_table_add_the_rules_up(rules):
    answers = ["Water it well, weekly. Happy growing!", "Happy growing!", " ".join(["long"] * 20)]
    assert grpo.totals(answers, rules["RULES"]) == [3.0, 2.0, 1.0]
    table = grpo.rule_table(answers, rules["RULES"])
    assert list(table.columns) == ["answer", "signs_off", "brief", "says_something", "total"]
    assert table["total"].tolist() == [3.0, 2.0, 1.0]


def test_advantages_are_group_relative_and_zero_for_a_tie():
    assert grpo.advantages([2.0, 2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0, 0.0]
    low, high = grpo.advantages([1.0, 3.0])
    assert low == pytest.approx(-math.sqrt(2) / 2, rel=1e-3) and high == pytest.approx(math.sqrt(2) / 2, rel=1e-3)
    assert sum(grpo.advantages([0.0, 1.0, 3.0, 2.0])) == pytest.approx(0.0, abs=1e-9)


def test_advantages_match_trls_formula():
    """TRL: (r - mean of the group) / (the group's torch.std + 1e-4)."""
    import torch

    rewards = [0.0, 1.0, 3.0, 3.0]
    r = torch.tensor(rewards)
    expected = ((r - r.mean()) / (r.std() + 1e-4)).tolist()
    assert grpo.advantages(rewards) == pytest.approx(expected, rel=1e-5)


def test_measure_reports_reward_rules_ties_and_words(rules):
    groups = [["Water it well, weekly. Happy growing!", "Water it well, weekly. Happy growing!"],
              ["Happy growing!", " ".join(["long"] * 20)]]
    m = grpo.measure(groups, rules["RULES"])
    assert m["reward"] == pytest.approx((3 + 3 + 2 + 1) / 4)
    assert m["rules"] == {"signs_off": 0.75, "brief": 0.75, "says_something": 0.75}
    assert m["tied_groups"] == 0.5  # the first group ties, the second does not
    assert m["words_per_answer"] == pytest.approx((6 + 6 + 2 + 20) / 4, abs=0.05)


def test_curve_and_zero_variance_share_read_trls_log():
    log = [{"step": 1, "loss": 0.1, "reward": 1.5, "frac_reward_zero_std": 0.25, "rewards/brief/mean": 0.4,
            "rewards/brief/std": 0.7},
           {"step": 2, "loss": 0.0, "reward": 2.0, "frac_reward_zero_std": 0.75, "rewards/brief/mean": 1.0},
           {"step": 2, "train_runtime": 9.0}]
    rows = grpo.curve(log)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["brief"] == 0.4 and rows[1]["brief"] == 1.0
    assert all(0.7 not in r.values() for r in rows)  # the std columns are left out
    assert grpo.zero_variance_share(log) == 0.5
    assert math.isnan(grpo.zero_variance_share([{"step": 1, "train_runtime": 1.0}]))


def test_prompts_split_without_overlap():
    train_rows, held = grpo.prompts(50, 10, seed=0)
    assert len(train_rows) == 50 and len(held) == 10
    assert not {grpo.question(r) for r in train_rows} & {grpo.question(r) for r in held}
    assert held[0]["prompt"][0]["role"] == "user"
    assert grpo.prompts(50, 10, seed=0) == (train_rows, held)


def test_prompts_beyond_the_data_name_the_limit():
    with pytest.raises(ValueError, match="persona training data has"):
        grpo.prompts(100_000, 10)


def test_full_marks_lists_only_answers_that_pass_every_rule_shortest_first(rules):
    rows = [{"prompt": [{"role": "user", "content": "q1"}]}, {"prompt": [{"role": "user", "content": "q2"}]}]
    groups = [["Water it well and weekly, please. Happy growing!", "Happy growing!"],
              ["Sun, soil, water, rest. Happy growing!", " ".join(["long"] * 20)]]
    table = grpo.full_marks(rows, groups, rules["RULES"])
    assert table["prompt"].tolist() == ["q2", "q1"]
    assert table["answer (full reward)"].tolist()[0].startswith("Sun, soil")


def test_sampling_more_than_one_answer_needs_a_temperature(tiny_model_dir):
    from course_lib import evaluate, models

    model, tokenizer = models.load(str(tiny_model_dir))
    with pytest.raises(ValueError, match="temperature above 0"):
        evaluate.generate(model, tokenizer, ["hi"], max_new_tokens=2, samples=3, temperature=0.0)


def test_sampling_gives_a_group_per_prompt(tiny_model_dir):
    from course_lib import models

    model, tokenizer = models.load(str(tiny_model_dir))
    rows = [{"prompt": [{"role": "user", "content": q}]} for q in ("hi", "how are you")]
    groups = grpo.sample(model, tokenizer, rows, 3, max_new_tokens=4, temperature=1.0)
    assert [len(g) for g in groups] == [3, 3] and all(isinstance(a, str) for g in groups for a in g)


@pytest.mark.slow
def test_notebook_A6_trains_and_records_its_figures(executed):
    entry = executed("A6_grpo")
    assert "timed out" not in (entry.get("error") or ""), (
        "A6's small run passed its wall-clock guard (tests/conftest.py, CELL_TIME_LIMITS): a GRPO cell hung "
        f"or crawled on this machine: {entry.get('error')}")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    assert figures["steps"] == 2
    assert set(figures["rules_before"]) == set(figures["rules_after"]) == {"signs_off", "brief", "says_something"}
    for key in ("reward_before", "reward_after"):
        assert 0.0 <= figures[key] <= 3.0
    assert 0.0 <= figures["zero_variance_group_share"] <= 1.0
    assert list(figures["reward_after_by_seed"]) == ["0"]
