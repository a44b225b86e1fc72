"""Small builders the data stage's tests share (tests/test_data_*.py): a chat pair, a file digest,
the messy export's manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from course_lib import data


def pair(q: str, a: str, source: str = "t.jsonl:1") -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": source}


def digest(path: Path) -> str:
    """A file's content hash: the tests check that a failed step left a learner's file unchanged."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def messy_manifest() -> dict:
    """What the messy raw export holds, by design (data_samples/raw/messy_export.MANIFEST.json)."""
    try:
        path = data.data_samples("raw", "messy_export.MANIFEST.json")
    except FileNotFoundError:
        pytest.skip("data_samples/raw/messy_export.MANIFEST.json is not there yet")
    return json.loads(path.read_text())
