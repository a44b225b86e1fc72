"""course_lib.data.dedup: exact and near duplicates, through ``clean`` and through shingles/Jaccard/MinHash."""

from __future__ import annotations

import copy

from data_lab import pair

from course_lib import data


def test_clean_removes_exact_and_near_duplicates_with_reasons(default_tokenizer):
    a = pair("How often should I water my tomato plants in summer?",
             "Water deeply two or three times a week, more in a heatwave. Happy growing!", "t.jsonl:1")
    exact = {**copy.deepcopy(a), "source": "t.jsonl:2"}
    spaced = pair("How often  should I water my tomato plants in summer?\u00a0",
                  "<p>Water deeply two or three times a week, more in a heatwave. Happy growing!</p>", "t.jsonl:3")
    near = pair("How often should I water my tomato plant in the summer?",
                "Water deeply two or three times a week, more in a heat wave. Happy growing!", "t.jsonl:4")
    other = pair("What is a cold frame?", "A box with a clear lid that shelters seedlings. Happy growing!", "t.jsonl:5")
    result = data.clean([a, exact, spaced, near, other], default_tokenizer, near_dup_threshold=0.7)
    assert [r["source"] for r in result.records] == ["t.jsonl:1", "t.jsonl:5"]
    reasons = {r.source: r.reason for r in result.removed}
    assert reasons["t.jsonl:2"] == "exact duplicate of t.jsonl:1"
    assert reasons["t.jsonl:3"] == "exact duplicate of t.jsonl:1"  # identical once cleaned
    assert reasons["t.jsonl:4"].startswith("near duplicate of t.jsonl:1 (Jaccard 0.")
    assert result.counts["exact_duplicates"] == 2 and result.counts["near_duplicates"] == 1
    assert result.duplicates_removed == 3 and result.near_pairs[0][:2] == ("t.jsonl:1", "t.jsonl:4")
    strict = data.clean([a, near, other], default_tokenizer, near_dup_threshold=0.99)
    assert len(strict.records) == 3  # a threshold above their similarity keeps both


def test_jaccard_and_minhash_find_the_similar_pair():
    sets = [data.shingles(t) for t in ("the quick brown fox jumps over the lazy dog",
                                       "the quick brown fox jumped over the lazy dog",
                                       "completely different words about compost heaps")]
    assert data.jaccard(sets[0], sets[0]) == 1.0 and data.jaccard(sets[0], sets[2]) < 0.1
    assert (0, 1) in data.minhash_candidates(sets) and (0, 2) not in data.minhash_candidates(sets)
