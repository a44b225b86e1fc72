"""course_lib.data.store: split, atomic saves that never silently overwrite, reading a split back,
and ensure_dataset (an existing split untouched, the default one built from data_samples)."""

from __future__ import annotations

import json

import pytest
from data_lab import messy_manifest, pair

from course_lib import data


def records_n(n):
    return [pair(f"Question {i}?", f"Answer {i}.", f"t.jsonl:{i}") for i in range(1, n + 1)]


def test_split_is_deterministic_disjoint_and_keeps_copies_together():
    records = records_n(50)
    records += [{**records[0], "source": "t.jsonl:1+noise"}, {**records[1], "source": "t.jsonl:2+synonyms"}]
    train, validation = data.split(records, validation_share=0.2, seed=0)
    again = data.split(records, validation_share=0.2, seed=0)
    assert (train, validation) == again
    assert data.split(records, validation_share=0.2, seed=1)[1] != validation
    sources = [r["source"] for r in train + validation]
    assert sorted(sources) == sorted(r["source"] for r in records) and len(set(sources)) == len(sources)
    assert len(validation) in (10, 11)
    for derived in ("t.jsonl:1", "t.jsonl:2"):
        sides = {side for side, part in (("t", train), ("v", validation)) for r in part
                 if r["source"].split("+")[0] == derived}
        assert len(sides) == 1
    assert data.split(records_n(3), validation_share=0.1)[1], "a tiny set still gets one validation example"
    with pytest.raises(ValueError):
        data.split(records, validation_share=1.0)


def test_save_split_writes_atomically_and_never_silently_overwrites(tmp_path, capsys):
    folder = tmp_path / "data"
    train, validation = data.split(records_n(20), seed=0)
    data.save_split(train, validation, folder, report={"note": "first"})
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "train.jsonl", "validation.jsonl"]
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert json.loads(first["report.json"])["train_examples"] == len(train)
    data.save_split(train, validation, folder)  # the same dataset again: nothing moved
    assert "already holds this dataset" in capsys.readouterr().out
    assert not list(folder.glob("backup-*"))
    other_train, other_val = data.split(records_n(30), seed=1)
    data.save_split(other_train, other_val, folder)
    assert "moved" in capsys.readouterr().out
    backups = list(folder.glob("backup-*"))
    assert len(backups) == 1 and (backups[0] / "train.jsonl").read_bytes() == first["train.jsonl"]
    assert not list(folder.glob(".*tmp*")), "temporary files left behind"
    loaded = data.load_split(folder)
    assert loaded["train"].num_rows == len(other_train) and loaded["validation"].num_rows == len(other_val)
    assert loaded["train"][0]["messages"] == other_train[0]["messages"]


def test_save_split_backs_up_files_a_learner_made(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("my own hand-made data\n")
    data.save_split(*data.split(records_n(10)), folder)
    backup = next(folder.glob("backup-*"))
    assert (backup / "train.jsonl").read_text() == "my own hand-made data\n"


def test_load_split_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        data.load_split(tmp_path / "nothing")


def test_ensure_dataset_returns_an_existing_split_untouched(tmp_path, capsys):
    folder = tmp_path / "data"
    data.save_split(*data.split(records_n(10)), folder)
    stamp = (folder / "train.jsonl").stat().st_mtime_ns
    assert data.ensure_dataset(tmp_path) == folder
    assert (folder / "train.jsonl").stat().st_mtime_ns == stamp and "building" not in capsys.readouterr().out



def test_ensure_dataset_builds_the_default_split(tmp_path, default_tokenizer, capsys):
    messy_manifest()
    folder = data.ensure_dataset(tmp_path, tokenizer=default_tokenizer)
    assert "No cleaned dataset in" in capsys.readouterr().out
    split = data.load_split(folder)
    report = json.loads((folder / "report.json").read_text())
    assert split["train"].num_rows > 300 and split["validation"].num_rows > 30
    assert report["train_examples"] == split["train"].num_rows and report["seed"] == 0
    sources = set(split["train"]["source"]) | set(split["validation"]["source"])
    assert not any(s.startswith("persona_zh") for s in sources), "the Chinese sample is not in the default set"
    persona = data.load_records(data.data_samples("persona", "train.jsonl"))
    assert sum(s.startswith("train.jsonl:") for s in sources) == len(persona.records), "a clean persona example was lost"
    manifest = messy_manifest()
    assert report["bad_records"] == len(manifest["malformed_json"]) + len(manifest["schema_errors"])
    assert report["counts"]["duplicates_removed"] == len(manifest["exact_duplicates"]) + len(manifest["near_duplicates"])
