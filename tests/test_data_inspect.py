"""course_lib.data.inspect: the length histogram, the shipped messy export checked against its manifest,
and notebook 01's small run."""

from __future__ import annotations

import json

import pytest
from data_lab import digest, messy_manifest, pair

from course_lib import data


def test_length_histogram(default_tokenizer):
    records = [pair("Q?", "A " * n, f"t.jsonl:{n}") for n in (5, 20, 80)]
    fig = data.length_histogram(records, records[:2], default_tokenizer, max_tokens=512)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 3



def test_messy_export_every_planted_problem_is_caught(default_tokenizer):
    manifest = messy_manifest()
    path = data.data_samples("raw", manifest["file"])
    before = digest(path)
    loaded = data.load_records(path)
    cleaned = data.clean(loaded.records, default_tokenizer)
    table, misses = data.manifest_check(manifest, loaded, cleaned)
    assert not any(misses.values()), "\n" + table.to_string()
    assert set(table["category"]) >= {"malformed_json", "schema_errors", "exact_duplicates", "near_duplicates", "html",
                                      "markdown", "control_chars", "emails", "phones", "empty", "over_long", "unicode",
                                      "whitespace"}
    # exactly the planted bad lines, no more
    assert sorted(b.line for b in loaded.bad if b.kind == "malformed_json") == manifest["malformed_json"]
    assert sorted(b.line for b in loaded.bad if b.kind == "schema") == manifest["schema_errors"]
    assert loaded.raw_records == manifest["total_lines"]
    # text steps change the planted records and nothing else (whitespace also tidies after html/control steps)
    lines = lambda step: sorted(int(s.rsplit(":", 1)[1]) for s in cleaned.changed[step])  # noqa: E731
    assert lines("html") == sorted(manifest["html"] + manifest["markdown"])
    assert lines("control_chars") == manifest["control_chars"]
    assert lines("unicode") == manifest["unicode"]
    assert lines("pii") == sorted(set(manifest["emails"] + manifest["phones"]))
    assert cleaned.counts["emails_masked"] == len(manifest["emails"]) and cleaned.counts["phones_masked"] == len(manifest["phones"])
    # removed: exactly empty + over-long + duplicate copies; the off-topic and multi-turn records are kept
    dropped = sorted(int(r.source.rsplit(":", 1)[1]) for r in cleaned.removed)
    copies = [b for _, b in manifest["exact_duplicates"] + manifest["near_duplicates"]]
    assert dropped == sorted(manifest["empty"] + manifest["over_long"] + copies)
    assert len(cleaned.records) == manifest["counts"]["expected_after_cleaning"]
    assert cleaned.duplicates_removed == len(copies)
    kept_text = json.dumps([r["messages"] for r in cleaned.records], ensure_ascii=False)
    assert "@example" not in kept_text and "<p>" not in kept_text and "\\u0007" not in kept_text and "**" not in kept_text
    assert digest(path) == before


@pytest.mark.slow
def test_notebook_01_small_run_records_what_it_found(executed):
    messy_manifest()  # skips when the manifest is not there
    entry = executed("01_data")
    assert entry["status"] == "ok", entry.get("error")
    figures = entry["figures"]
    for key in ("raw_records", "bad_records", "duplicates_removed", "pii_masked", "train_examples", "validation_examples"):
        assert key in figures, key
    assert figures["duplicates_removed"] == figures["exact_duplicates"] + figures["near_duplicates"] > 0
    assert figures["pii_masked"] > 0 and figures["train_examples"] > 0 and figures["validation_examples"] > 0
    assert figures["missed_planted_problems"] == 0
