"""Split and save: train/validation split, atomic writes, reading a saved split back, and the
default pipeline (``build`` / ``ensure_dataset``) that later notebooks call when notebook 01 did not run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

from course_lib import models, paths
from course_lib.data.clean import clean
from course_lib.data.load import load_all
from course_lib.paths import data_samples

DEFAULTS = {"max_tokens": 512, "near_dup_threshold": 0.8, "zscore": 3.0, "validation_share": 0.1, "seed": 0}


# =========================================================================== split and save


def split(records: list[dict], validation_share: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle with SEED and cut off VALIDATION_SHARE for validation; same seed, same split.

    Records derived from one original (augmented copies, "x.jsonl:12+noise") stay on the same side,
    so validation never holds a near copy of a training example.
    """
    if not 0 <= validation_share < 1:
        raise ValueError(f"validation_share must be in [0, 1), not {validation_share}")
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["source"].split("+", 1)[0], []).append(record)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val = round(len(keys) * validation_share)
    if validation_share > 0 and len(keys) >= 2:
        n_val = max(1, n_val)
    val_keys = set(keys[:n_val])
    train = [r for r in records if r["source"].split("+", 1)[0] not in val_keys]
    validation = [r for r in records if r["source"].split("+", 1)[0] in val_keys]
    rng = random.Random(seed + 1)
    rng.shuffle(train)
    return train, validation


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps({"messages": r["messages"], "source": r["source"]}, ensure_ascii=False) + "\n"
                   for r in records)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


SPLIT_FILES = ("train.jsonl", "validation.jsonl", "report.json")


def save_split(train: list[dict], validation: list[dict], folder, report: dict | None = None) -> Path:
    """Write FOLDER/train.jsonl, validation.jsonl and report.json, without ever losing earlier files.

    Each file is written to a temporary name and renamed into place (atomic). If the folder already
    holds a different dataset (another run's settings, or files you made yourself), those files are
    first moved to FOLDER/backup-<time>/ and a sentence says so: re-running with new settings is the
    normal thing to do in this notebook, so refusing would only get in the way, and a backup loses
    nothing. Saving the very same dataset again writes nothing new.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"train.jsonl": _jsonl(train), "validation.jsonl": _jsonl(validation)}
    digest = hashlib.sha256((texts["train.jsonl"] + "\0" + texts["validation.jsonl"]).encode()).hexdigest()[:16]
    meta = {"dataset": digest, "train_examples": len(train), "validation_examples": len(validation),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), **(report or {})}
    texts["report.json"] = json.dumps(meta, indent=2, ensure_ascii=False, default=str)
    existing = [folder / name for name in SPLIT_FILES if (folder / name).exists()]
    if existing:
        same = all((folder / n).exists() and (folder / n).read_text(encoding="utf-8") == texts[n]
                   for n in ("train.jsonl", "validation.jsonl"))
        if same:
            _atomic_write(folder / "report.json", texts["report.json"])
            print(f"{folder} already holds this dataset ({len(train)} train / {len(validation)} validation): kept.")
            return folder
        backup = folder / f"backup-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while backup.exists():
            backup = folder / f"backup-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            suffix += 1
        backup.mkdir()
        for path in existing:
            os.replace(path, backup / path.name)
        print(f"{folder} held another dataset: moved {', '.join(p.name for p in existing)} to {backup.name}/.")
    for name in SPLIT_FILES:  # report.json last: its presence says the other two are complete
        _atomic_write(folder / name, texts[name])
    return folder


def write_jsonl(path, records: list[dict]) -> Path:
    """RECORDS as one JSON object per line, written atomically (PATH never holds half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_split(folder):
    """The saved split as a ``datasets.DatasetDict`` (train / validation), column ``messages`` (+ ``source``)."""
    from datasets import Dataset, DatasetDict

    folder = Path(folder)
    parts = {}
    for split_name in ("train", "validation"):
        path = folder / f"{split_name}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no saved split here; run notebook 01 or data.ensure_dataset(run_dir)")
        rows = read_jsonl(path)
        parts[split_name] = Dataset.from_list(rows) if rows else Dataset.from_dict({"messages": [], "source": []})
    return DatasetDict(parts)


def to_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"messages": r["messages"], "source": r["source"]} for r in records])


# =========================================================================== the default pipeline


def default_files() -> list[Path]:
    """What the course trains on by default: the persona set plus the cleaned messy export."""
    return [data_samples("persona", "train.jsonl"), data_samples("raw", "messy_export.jsonl")]


def holdout_records() -> list[dict]:
    """The held-out evaluation questions (never trained on), from the persona and general eval sets."""
    out = []
    for parts in (("persona", "eval.jsonl"), ("general", "eval.jsonl")):
        try:
            path = data_samples(*parts)
        except FileNotFoundError:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            try:
                obj = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                continue
            question = obj.get("question") or obj.get("instruction")
            if isinstance(question, str):
                out.append({"messages": [{"role": "user", "content": question}], "source": f"{path.name}:{number}"})
    return out


def build(run_dir_data, tokenizer, files=None, max_tokens: int = 512, near_dup_threshold: float = 0.8,
          zscore: float | None = 3.0, validation_share: float = 0.1, seed: int = 0, extra: list[dict] | None = None):
    """The whole stage in one call: load FILES, clean, split, save. Returns (load, clean, train, validation)."""
    loaded = load_all(*(files or default_files()))
    cleaned = clean(loaded.records, tokenizer, max_tokens=max_tokens, near_dup_threshold=near_dup_threshold,
                    zscore=zscore, holdout=holdout_records())
    train, validation = split(cleaned.records, validation_share=validation_share, seed=seed)
    train = train + (extra or [])
    report = {"files": loaded.files, "raw_records": loaded.raw_records, "bad_records": len(loaded.bad),
              "bad": [str(b) for b in loaded.bad], "seed": seed, "validation_share": validation_share,
              **cleaned.summary()}
    save_split(train, validation, run_dir_data, report=report)
    return loaded, cleaned, train, validation


def ensure_dataset(run_dir=None, tokenizer=None) -> Path:
    """RUN_DIR/data with a cleaned split; built with the default settings if it is not there yet."""
    folder = paths.run_dir(run_dir) / "data"
    if (folder / "train.jsonl").exists() and (folder / "validation.jsonl").exists():
        return folder
    print(f"No cleaned dataset in {folder}: building it from data_samples with the default settings (~5 s).")
    if tokenizer is None:
        tokenizer = models.load_tokenizer()
    build(folder, tokenizer, **{k: v for k, v in DEFAULTS.items()})
    return folder
