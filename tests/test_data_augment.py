"""course_lib.data.augment: copies change questions only, and the same seed gives the same copies."""

from __future__ import annotations

from data_lab import pair

from course_lib import data


def test_augmentation_changes_questions_only_and_is_deterministic():
    record = pair("What is the best way to start a small herb garden?", "Start with basil. Happy growing!", "p.jsonl:3")
    synonym = data.synonym_replace(record, rate=1.0)
    assert synonym["messages"][1] == record["messages"][1] and synonym["source"] == "p.jsonl:3+synonyms"
    assert synonym["messages"][0]["content"] != record["messages"][0]["content"]
    noisy = data.add_noise(record, rate=0.5, seed=1)
    assert noisy == data.add_noise(record, rate=0.5, seed=1) and noisy["messages"][1] == record["messages"][1]
    filled = data.fill_templates(n=5, seed=0)
    assert len(filled) == 5 and all(r["messages"][1]["content"].endswith("Happy growing!") for r in filled)
    assert not any("{" in m["content"] for r in filled for m in r["messages"])
    extra = data.augment([record, pair("Q2?", "A2.", "p.jsonl:4")], share=1.0, templates=2, seed=0)
    assert {r["source"] for r in extra} >= {"p.jsonl:3+synonyms", "p.jsonl:3+noise"} and len(extra) >= 4
